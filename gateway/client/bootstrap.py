"""What the dev scripts do before anything else: check that this interpreter has the project's
dependencies (run outside the virtualenv, a script says how to run it instead of failing on an
import), and a help formatter that shows every default.

Imports nothing outside the standard library, so it works in any interpreter.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout (scripts/, .venv/)
# What the dev client imports: the WebSocket client, tokens, and audio conversion.
CLIENT_MODULES = ("websockets", "jwt", "cryptography", "numpy", "soxr")


def missing_modules(modules: Sequence[str]) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require_installed(script: str, modules: Sequence[str] = CLIENT_MODULES) -> None:
    """Exit with status 2 and a message naming the fix when a dependency is missing."""
    missing = missing_modules(modules)
    if not missing:
        return
    venv_python = ROOT / ".venv" / "bin" / "python"
    command = f"{shlex.quote(str(venv_python))} scripts/{script}"
    if venv_python.exists():
        fix = f"run it with the project's virtualenv: {command} ..."
    else:
        fix = (
            f"create the virtualenv first (`make run`, or `make venv`, in {ROOT}), "
            f"then run {command} ..."
        )
    print(
        f"{script}: this Python ({sys.executable}) lacks the project's dependencies "
        f"(no module {', '.join(map(repr, missing))}); {fix}",
        file=sys.stderr,
    )
    raise SystemExit(2)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and "(default: X)" after every option that has a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"
