"""The wheel `pip install .` builds (the container image's install) holds every file the code
reads at run time: Lua scripts, migrations, the viewer page, prompts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "ingest", "fanout", "store", "shared")
AUTHORING_ONLY = (".mako",)  # the template `alembic revision` writes new migrations from


def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # Built from a copy of the tracked files, as a clean clone would be: an earlier build's
    # egg-info in the checkout lists data files that package-data may no longer name.
    source = tmp_path / "source"
    for name in tracked:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wanted = {
        name
        for name in tracked
        if name.startswith(tuple(f"{package}/" for package in PACKAGES))
        and not name.endswith(AUTHORING_ONLY)
    }
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = set(archive.namelist())
    assert sorted(wanted - packed) == []


def test_python_dash_m_gateway_is_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: meeting-gateway"), done.stderr
