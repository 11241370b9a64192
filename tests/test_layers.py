"""The packages' import rules, checked on their syntax trees: `gateway` may import the others;
`ingest`, `fanout`, `store` and `shared` never import `gateway`; `store` does not import
`fanout` (what both need is in `shared`); `shared` imports none of this project's packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("gateway", "ingest", "fanout", "store", "shared")
FORBIDDEN = {
    "ingest": {"gateway"},
    "fanout": {"gateway"},
    "store": {"gateway", "fanout"},
    "shared": set(OURS) - {"shared"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(OURS)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    found = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for name in sorted(imported_packages(path) & FORBIDDEN[package])
    ]
    assert found == []
