"""The OpenAPI document names exactly the app's REST routes (tests/e2e/test_meetings_api.py
reads it from a running gateway)."""

from __future__ import annotations

from starlette.routing import Route

from gateway.app import create_app
from gateway.config import Settings
from gateway.http.openapi import document


def test_every_rest_route_is_documented_and_nothing_else() -> None:
    app = create_app(Settings())
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert served == documented


def test_every_reference_resolves_and_every_operation_answers() -> None:
    spec = document()
    schemas = spec["components"]["schemas"]

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(spec):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], (path, method)
            for name in [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]:
                assert f"{{{name}}}" in path


def test_the_document_is_valid_openapi_3_0() -> None:
    """Against the OpenAPI 3.0 schema itself: 3.1 constructs (`"type": [..., "null"]`,
    `const`) are errors in the 3.0.3 document that clients' generators read."""
    from openapi_spec_validator import OpenAPIV30SpecValidator

    errors = [error.message for error in OpenAPIV30SpecValidator(document()).iter_errors()]
    assert errors == []


def test_the_recording_job_schema_names_every_field_of_a_job() -> None:
    from datetime import UTC, datetime

    from gateway.http.recordings import job_json
    from store.jobs import Job

    now = datetime.now(UTC)
    job = Job(
        **{name: None for name in Job.__dataclass_fields__ if name != "extra"}
        | {"job_id": "j", "meeting_id": "m", "status": "queued", "audio_ms_done": 0}
        | {"audio_ms_total": 0, "engines_used": {}, "created_at": now, "updated_at": now}
    )
    schema = document()["components"]["schemas"]["RecordingJob"]["properties"]
    assert set(job_json(job)) == set(schema)


def test_the_answers_that_say_when_to_retry_or_where_to_look_declare_their_headers() -> None:
    """A generated client sees only what the document declares: the 429s of search and notes
    previews, Retry-After on every 429 and 507, the upload's Location, an export's filename."""
    paths = document()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            for status in ("429", "507"):
                if status in operation["responses"]:
                    headers = operation["responses"][status].get("headers", {})
                    assert "Retry-After" in headers, (path, method, status)
    assert "429" in paths["/api/v1/search"]["get"]["responses"]
    assert "429" in paths["/api/v1/meetings/{meeting_id}/notes"]["get"]["responses"]
    assert "400" in paths["/api/v1/recordings/{job_id}/events"]["get"]["responses"]
    upload = paths["/api/v1/meetings/{meeting_id}/recordings"]["post"]["responses"]
    assert "Location" in upload["202"]["headers"]
    assert "Retry-After" in upload["503"]["headers"]
    export = paths["/api/v1/meetings/{meeting_id}/transcript"]["get"]["responses"]["200"]
    assert "Content-Disposition" in export["headers"]


def test_every_operation_has_a_unique_name_and_a_group() -> None:
    """Generated clients name their methods by operationId and group them by tag."""
    ids = [
        (operation["operationId"], operation["tags"])
        for operations in document()["paths"].values()
        for operation in operations.values()
    ]
    names = [name for name, _ in ids]
    assert len(names) == len(set(names)) and all(names)
    assert all(len(tags) == 1 and tags[0] for _, tags in ids)


def test_schemas_say_which_fields_every_answer_carries() -> None:
    """A generated client makes a field optional unless `required` names it (the e2e tests
    check real answers against these: tests/openapi_check.py)."""
    schemas = document()["components"]["schemas"]
    for name, schema in schemas.items():
        if name != "Error":
            assert schema.get("required"), name
            assert set(schema["required"]) <= set(schema["properties"]), name
    assert set(schemas["RecordingJob"]["required"]) == set(schemas["RecordingJob"]["properties"])
    assert "streams" not in schemas["Meeting"]["required"]  # one meeting's answer only
    assert "secret" not in schemas["WebhookEndpoint"]["required"]  # shown once
