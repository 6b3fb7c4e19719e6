"""The docs say what the code does: links resolve, YAML examples parse, commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from deploy_models import parse_spec
from workflows.common import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)


def test_readme_links_to_docs_resolve() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", (ROOT / "README.md").read_text())
    assert {path for path, _ in links} >= {"docs/ci.md", "docs/temporal-ui.md", "docs/operations.md", "docs/benchmarks.md"}
    for path, anchor in links:
        target = ROOT / path
        assert target.exists(), path
        if anchor:
            headings = {slug(h) for h in re.findall(r"^#+ (.+)$", target.read_text(), re.M)}
            assert anchor in headings, f"{path}#{anchor}: no such heading"


def test_ci_examples_are_valid_yaml_running_tidegate() -> None:
    github, gitlab = (yaml.safe_load(block) for block in yaml_blocks(DOCS / "ci.md"))
    steps = github["jobs"]["deploy"]["steps"]
    assert any("tidegate start" in step.get("run", "") and "--wait" in step["run"] for step in steps)
    assert any("tidegate start" in line and "--wait" in line for line in gitlab["deploy"]["script"])


def test_notification_example_is_a_valid_spec_section() -> None:
    (example,) = [block for block in yaml_blocks(DOCS / "operations.md") if block.startswith("notifications:")]
    spec = parse_spec({
        "app": "myapp", "image": "myapp:2.0", "strategy": {"type": "blueGreen", "blueGreen": {}}, **yaml.safe_load(example),
    })
    assert spec.notifications is not None and [hook.format for hook in spec.notifications.webhooks] == ["slack", "generic"]


def test_search_attribute_command_registers_every_attribute() -> None:
    text = (DOCS / "temporal-ui.md").read_text()
    command = re.search(r"temporal operator search-attribute create.*?```", text, re.S)
    assert command
    for key in SEARCH_ATTRIBUTES:
        assert f"--name {key.name} --type Keyword" in command.group(0)


def test_reliability_cites_tests_that_exist() -> None:
    """Every `file::test` in docs/reliability.md names a test that exists (`::test` continues the
    file cited before it in the same row)."""
    cited = 0
    for row in (ROOT / "docs" / "reliability.md").read_text().splitlines():
        current = None
        for file, name in re.findall(r"`(?:(test_\w+\.py))?::(\w+)", row):
            current = file or current
            assert current is not None, f"{name} is cited without its file: {row}"
            source = (ROOT / "tests" / current).read_text()
            assert re.search(rf"^(async )?def {name}\(", source, re.M), f"tests/{current} has no {name}"
            cited += 1
    assert cited > 60
