"""No module outside gateway/server/ uses a private name of uvicorn or Starlette.

Scanned: every Python file of the packages (`gateway` except `gateway/server/`, `fanout`,
`ingest`, `store`) and of `scripts/` and `bench/`, by their syntax tree. A file fails on
  - an import of a private uvicorn/Starlette module or name (a dotted part or an imported name
    with a leading underscore: `from starlette._exception_handler import ...`,
    `from uvicorn.protocols.utils import _x`), or of uvicorn's internal packages
    (`uvicorn.protocols`, `uvicorn.middleware`, `uvicorn.supervisors`, `uvicorn.lifespan`,
    `uvicorn.loops`: only `uvicorn`, `uvicorn.config` and `uvicorn.server` are public);
  - an attribute access `x._name` or a string `"_name"` (as `getattr`/`vars(...).pop` use)
    where `_name` is a private attribute that uvicorn or Starlette define (collected from their
    sources: `x._name = ...` assignments and private class members, dunders aside). A name our
    own code defines too (`_send`, `_receive`) is allowed only as `self._name`/`cls._name`, on
    our own object: `websocket._send` fails, `self._send` of one of our classes does not; a
    string is flagged only for names that are theirs alone;
  - `.__self__` or `getattr(..., "__self__")` (finding an object through a bound method, such
    as a signal handler's server) and `signal.getsignal(...)`.
Tests are not scanned: they check the pinned internals on purpose (tests/gateway/).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEAM = REPO / "gateway" / "server"
SCANNED = ("gateway", "fanout", "ingest", "store", "scripts", "bench")
THIRD_PARTY = ("uvicorn", "starlette")
INTERNAL_PACKAGES = ("protocols", "middleware", "supervisors", "lifespan", "loops")


def scanned_files() -> list[Path]:
    files = [p for top in SCANNED for p in sorted((REPO / top).rglob("*.py"))]
    return [p for p in files if SEAM not in p.parents and "migrations" not in p.parts]


def package_sources(name: str) -> Iterator[Path]:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    for location in spec.submodule_search_locations:
        yield from Path(location).rglob("*.py")


def private_names_defined(files: list[Path] | Iterator[Path]) -> set[str]:
    """`_name`s the files define as attributes: `x._name = ...` targets and class members."""
    names: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        names.add(item.name)
                    elif isinstance(item, ast.Assign | ast.AnnAssign):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in names if is_private(n)}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def third_party_private_names() -> set[str]:
    return set().union(*(private_names_defined(package_sources(n)) for n in THIRD_PARTY))


def violations(path: Path, source: str, forbidden: Forbidden) -> list[str]:
    """What `source` (the file at `path`) does that only gateway/server/ may do."""
    found: list[str] = []
    tree = ast.parse(source, str(path))

    def where(node: ast.AST) -> str:
        return f"{path.relative_to(REPO) if path.is_absolute() else path}:{node.lineno}"

    def private_module(module: str) -> bool:
        parts = module.split(".")
        if parts[0] not in THIRD_PARTY:
            return False
        if any(is_private(p) for p in parts[1:]):
            return True
        return parts[0] == "uvicorn" and len(parts) > 1 and parts[1] in INTERNAL_PACKAGES

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if private_module(alias.name):
                    found.append(f"{where(node)}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if private_module(node.module):
                found.append(f"{where(node)}: from {node.module} import ...")
            elif node.module.split(".")[0] in THIRD_PARTY:
                for alias in node.names:
                    if is_private(alias.name) or private_module(f"{node.module}.{alias.name}"):
                        found.append(f"{where(node)}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute):
            if node.attr == "__self__":
                found.append(f"{where(node)}: .__self__")
            elif node.attr == "getsignal":
                found.append(f"{where(node)}: signal.getsignal")
            elif node.attr in forbidden.theirs_only or (
                node.attr in forbidden.shared and not on_own_object(node)
            ):
                found.append(f"{where(node)}: .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in forbidden.theirs_only or node.value == "__self__":
                found.append(f"{where(node)}: {node.value!r}")
    return found


@dataclass(frozen=True)
class Forbidden:
    theirs_only: frozenset[str]  # private to uvicorn/Starlette: forbidden on any object
    shared: frozenset[str]  # ours too: allowed only as `self._name` / `cls._name`


def on_own_object(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


@pytest.fixture(scope="module")
def forbidden() -> Forbidden:
    theirs = third_party_private_names()
    ours = private_names_defined(scanned_files()) | private_names_defined(SEAM.rglob("*.py"))
    return Forbidden(frozenset(theirs - ours), frozenset(theirs & ours))


def test_no_module_outside_the_seam_uses_uvicorn_or_starlette_internals(
    forbidden: set[str],
) -> None:
    found = [v for path in scanned_files() for v in violations(path, path.read_text(), forbidden)]
    assert found == [], "move these behind gateway/server/:\n" + "\n".join(found)


def test_the_names_relied_on_are_forbidden_outside_the_seam(forbidden: Forbidden) -> None:
    """The private names gateway/server/ wraps stay detectable outside it."""
    assert {"_query_params", "_url"} <= forbidden.theirs_only
    assert {"_receive", "_send"} <= forbidden.theirs_only | forbidden.shared


SNIPPET = """
import signal
import uvicorn.protocols.utils
from starlette._exception_handler import wrap_app_handling_exceptions
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.config import Config
from starlette.websockets import WebSocket

def f(self, websocket: WebSocket) -> None:
    receive = websocket._receive
    self._send = websocket._send  # ours to set on self, not to read from a WebSocket
    vars(websocket).pop("_query_params", None)
    server = signal.getsignal(signal.SIGTERM).__self__
    server = getattr(handler, "__self__", None)
"""


def test_the_scan_reports_each_kind_of_use(forbidden: Forbidden) -> None:
    found = violations(Path("snippet.py"), SNIPPET, forbidden)
    assert sorted(v.split(": ", 1)[1] for v in found) == sorted(
        [
            "import uvicorn.protocols.utils",
            "from starlette._exception_handler import ...",
            "from uvicorn.protocols.websockets.websockets_sansio_impl import ...",
            "signal.getsignal",
            ".__self__",
            "'__self__'",
            "._receive",
            "._send",
            "'_query_params'",
        ]
    )
