"""No shell anywhere in the deployment path: every Kubernetes call goes through the client.

Read from the code itself, so that a `subprocess.run(["kubectl", ...])` added later fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT_PATH = sorted(
    [ROOT / "worker.py", ROOT / "starter.py", ROOT / "deploy_models.py", ROOT / "payload_codec.py"]
    + list((ROOT / "workflows").glob("*.py"))
    + list((ROOT / "activities").glob("*.py"))
)
SHELL_MODULES = {"subprocess", "pty", "shlex"}
SHELL_CALLS = {"system", "popen", "execv", "execve", "execvp", "execl", "spawnv", "spawnl", "create_subprocess_exec", "create_subprocess_shell"}


def shell_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in SHELL_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in SHELL_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in SHELL_CALLS:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in ("kubectl", "helm", "istioctl"):
            found.append(f"line {node.lineno}: {node.value!r}")
    return found


@pytest.mark.parametrize("path", DEPLOYMENT_PATH, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_shell_in_the_deployment_path(path: Path) -> None:
    assert shell_uses(path) == []


def test_the_scan_finds_a_shell(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import subprocess\nimport os\nos.system('kubectl apply -f x')\nsubprocess.run(['kubectl'])\n")
    assert shell_uses(sample) == ["import subprocess", "line 3: .system", "line 4: 'kubectl'"]
