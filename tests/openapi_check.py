"""Real answers checked against the served OpenAPI document's schemas (jsonschema, with
OpenAPI 3.0's `nullable` spelled as JSON Schema's null type)."""

from __future__ import annotations

from typing import Any

import jsonschema


def _json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def assert_answer_matches(
    spec: dict[str, Any], method: str, path: str, body: Any, status: int = 200
) -> None:
    """`body`, answered to `method` on the documented `path` (its template), fits the schema
    the document declares for `status`."""
    response = spec["paths"][path][method.lower()]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    root = {**_json_schema(schema), "components": _json_schema(spec["components"])}
    # Formats too (date-time: rfc3339-validator is installed with jsonschema's format extra).
    jsonschema.validate(body, root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
