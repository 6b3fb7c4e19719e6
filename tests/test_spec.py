"""The spec is the user's contract: every problem is reported with its field path."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from deploy_models import DeploymentSpec, SpecError, format_duration, parse_duration, parse_spec


def spec(**fields: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"app": "myapp", "image": "myapp:2.0", "strategy": {"type": "blueGreen"}}
    document.update(fields)
    return document


def problems(document: Any) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(document)
    return caught.value.problems


def test_defaults_follow_the_seed() -> None:
    parsed = parse_spec(spec())
    assert (parsed.namespace, parsed.replicas, parsed.container_port) == ("default", 3, 8080)
    assert parsed.active_service == "myapp"
    assert parsed.blue_green.scale_down_delay == timedelta(minutes=10)
    assert parsed.blue_green.progress_deadline == timedelta(minutes=10)
    assert parsed.blue_green.approval is None and parsed.blue_green.smoke_test is None


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("250ms", 0.25), ("0s", 0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            spec(strategy={"type": "blueGreen", "blueGreen": {"scaleDownDelay": "10x"}}),
            "strategy.blueGreen.scaleDownDelay: '10x' is not a duration",
        ),
        (spec(app="My_App"), "app: 'My_App' is not a DNS-1123 label"),
        (spec(app="a" * 60), "app: '" + "a" * 60 + "' is longer than 56 characters"),
        (spec(image=""), "image: must not be empty"),
        (spec(image="my app:1"), "image: 'my app:1' is not an image reference"),
        (spec(replicas=0), "replicas: Input should be greater than or equal to 1"),
        (spec(containerPort=70000), "containerPort: Input should be less than or equal to 65535"),
        (spec(namespace="Prod"), "namespace: 'Prod' is not a DNS-1123 label"),
        (spec(strategy={"type": "rolling"}), "strategy.type: 'rolling' is not implemented yet"),
        (spec(strategy={"type": "fast"}), "strategy.type: 'fast' is not one of the choices"),
        (spec(strategy={}), "strategy.type: is required"),
        (spec(replica=3), "replica: is not a known field"),
        (
            spec(strategy={"type": "blueGreen", "blueGreen": {"smokeTest": {"url": "myapp/health"}}}),
            "strategy.blueGreen.smokeTest.url: 'myapp/health' is not an http:// or https:// URL",
        ),
        (
            spec(strategy={"type": "blueGreen", "blueGreen": {"smokeTest": {"url": "http://{host}/"}}}),
            "strategy.blueGreen.smokeTest.url: 'http://{host}/' uses an unknown placeholder 'host'",
        ),
        (
            spec(strategy={"type": "blueGreen", "blueGreen": {"approval": {"timeout": "0s"}}}),
            "strategy.blueGreen.approval.timeout: must be longer than 0s",
        ),
        (
            spec(strategy={"type": "blueGreen", "blueGreen": {"activeService": "web", "previewService": "web"}}),
            "strategy.blueGreen: previewService must differ from activeService",
        ),
        ({"image": "x:1", "strategy": {"type": "blueGreen"}}, "app: is required"),
        ("just a string", "(spec): must be a mapping"),
    ],
)
def test_bad_specs_name_the_field_and_the_problem(document: Any, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(document)), problems(document)


def test_every_problem_is_reported_at_once() -> None:
    found = problems(spec(app="", image="", replicas=-1))
    assert [p.split(":")[0] for p in found] == ["app", "image", "replicas"]


def test_spec_round_trips_through_json() -> None:
    parsed = parse_spec(
        spec(strategy={"type": "blueGreen", "blueGreen": {"approval": {"timeout": "1h"}, "scaleDownDelay": "90s"}})
    )
    assert DeploymentSpec.model_validate_json(parsed.model_dump_json()) == parsed
