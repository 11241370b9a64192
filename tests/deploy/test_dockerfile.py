"""The Dockerfile stays multi-stage and non-root, and agrees with the Kubernetes Deployment.

(No Docker daemon is assumed by the suite; the image build itself is not run here.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), re.sub(r"\s+", " ", rest.strip())))
    return found


def test_multi_stage_non_root_and_installed_like_the_readme() -> None:
    steps = instructions()
    stages = [i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"]
    assert len(stages) >= 2
    final = steps[stages[-1] :]
    (user,) = [rest for keyword, rest in final if keyword == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can verify it
    runs = " ".join(rest for keyword, rest in steps[: stages[-1]] if keyword == "RUN")
    assert "python3 -m venv /opt/venv" in runs and "/opt/venv/bin/pip install ." in runs
    assert any(k == "COPY" and rest.startswith("--from=") for k, rest in final)
    assert ("WORKDIR", "/var/lib/meeting-gateway") in final


def test_the_deployment_runs_what_the_image_runs() -> None:
    steps = dict(instructions())
    entrypoint, cmd = json.loads(steps["ENTRYPOINT"]), json.loads(steps["CMD"])
    assert entrypoint == ["meeting-gateway"]
    deployment = yaml.safe_load((REPO / "k8s" / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == cmd
    assert str(container["ports"][0]["containerPort"]) in cmd
    assert pod["securityContext"]["runAsUser"] == int(steps["USER"].split(":")[0])
