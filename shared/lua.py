"""Redis Lua scripts, kept as real files in a `lua/` folder beside the code that runs them."""

from __future__ import annotations

from importlib.resources import files


def lua_script(package: str, name: str) -> str:
    """The text of `<package>/lua/<name>.lua`."""
    return files(package).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
