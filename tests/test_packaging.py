"""docker-compose.yml and the Dockerfile, checked as far as a machine without a Docker engine can.

Debian's `docker-compose` validates the compose file without an engine (`config`); the Dockerfile
is checked "on paper": its base image fits pyproject's requires-python, what it copies exists, and
everything pyproject installs is copied before `pip install .`.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from tests.system_tools import ensure_debian_tool
from workflows.common import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def copies() -> list[tuple[list[str], str]]:
    """Each COPY's (sources, destination)."""
    found = []
    for instruction, arguments in dockerfile():
        if instruction == "COPY":
            parts = [part for part in arguments.split() if not part.startswith("--")]
            found.append((parts[:-1], parts[-1]))
    return found


def environment() -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction, arguments in dockerfile():
        if instruction == "ENV":
            values.update(pair.split("=", 1) for pair in arguments.split())
    return values


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as `docker-compose config` resolves it (which also validates it)."""
    binary = ensure_debian_tool("docker-compose", "docker-compose")
    done = subprocess.run(
        [binary, "--file", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/tmp/kubeconfig", "HOME": "/tmp"},
    )
    assert done.returncode == 0, f"docker-compose config rejects docker-compose.yml:\n{done.stderr}"
    resolved = yaml.safe_load(done.stdout)
    assert isinstance(resolved, dict)
    return resolved


def test_compose_is_the_production_shaped_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgresql", "temporal", "temporal-admin-tools", "temporal-ui", "prometheus", "worker"} <= set(services)
    assert services["postgresql"]["image"].startswith("postgres:")
    temporal = services["temporal"]
    assert temporal["image"].startswith("temporalio/auto-setup:")
    assert temporal["environment"]["DB"] == "postgres12" and temporal["environment"]["POSTGRES_SEEDS"] == "postgresql"
    assert temporal["depends_on"]["postgresql"]["condition"] == "service_healthy"
    assert services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    worker = services["worker"]
    assert Path(worker["build"]["context"]) == ROOT
    assert worker["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert worker["depends_on"]["temporal-admin-tools"]["condition"] == "service_completed_successfully"


def test_compose_creates_every_search_attribute(compose: dict[str, Any]) -> None:
    script = " ".join(compose["services"]["temporal-admin-tools"]["command"])
    assert "temporal operator search-attribute create" in script and "--type Keyword" in script
    for key in SEARCH_ATTRIBUTES:
        assert re.search(rf"\b{key.name}\b", script), f"{key.name} is not created by temporal-admin-tools"


def test_prometheus_scrapes_the_workers_metrics_port(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    port = worker["environment"]["TIDEGATE_METRICS_PORT"]
    assert port in [str(p) for p in worker["expose"]]
    mounts = [  # `source:target[:mode]` (compose v1) or {source, target} (v2)
        (v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
        for v in compose["services"]["prometheus"]["volumes"]
    ]
    source = next(source for source, target in mounts if target.endswith("prometheus.yml"))
    config = yaml.safe_load(Path(source).read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and str(discovery["port"]) == port
    assert environment()["TIDEGATE_METRICS_PORT"] == port  # the image's default is the same


def test_dockerfile_base_image_fits_requires_python() -> None:
    (base,) = [arguments for instruction, arguments in dockerfile() if instruction == "FROM"]
    match = re.match(r"python:(\d+\.\d+)", base)
    assert match, f"the base image {base} is not an official python image with a version"
    assert match[1] in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_dockerfile_copies_what_pyproject_installs() -> None:
    copied: set[str] = set()
    for sources, _ in copies():
        for source in sources:
            assert not Path(source).is_absolute() and ".." not in Path(source).parts, source
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            copied.add(source.rstrip("/"))
    settings = PYPROJECT["tool"]["setuptools"]
    assert "pyproject.toml" in copied
    for module in settings["py-modules"]:
        assert f"{module}.py" in copied, f"py-module {module} is not copied into the image"
    for package in settings["packages"]:
        assert package in copied, f"package {package} is not copied into the image"
    instructions = [instruction for instruction, _ in dockerfile()]
    install = next(i for i, (instruction, arguments) in enumerate(dockerfile()) if instruction == "RUN" and "pip install" in arguments)
    assert max(i for i, instruction in enumerate(instructions) if instruction == "COPY") < install


def test_dockerfile_runs_the_worker_unprivileged() -> None:
    entrypoint = next(arguments for instruction, arguments in dockerfile() if instruction == "ENTRYPOINT")
    assert "worker.py" in entrypoint
    user = next(arguments for instruction, arguments in dockerfile() if instruction == "USER")
    assert not user.startswith(("0", "root"))
    exposed = next(arguments for instruction, arguments in dockerfile() if instruction == "EXPOSE")
    assert exposed.strip() == environment()["TIDEGATE_METRICS_PORT"]
