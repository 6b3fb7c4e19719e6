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
        (
            spec(strategy={"type": "rolling", "canary": {}}),
            "strategy: strategy.canary is set but strategy.type is 'rolling'",
        ),
        (
            spec(strategy={"type": "rolling", "rolling": {"maxSurge": "a lot"}}),
            "strategy.rolling.maxSurge: 'a lot' is not a count or a percentage",
        ),
        (
            spec(strategy={"type": "rolling", "rolling": {"maxSurge": 0, "maxUnavailable": "0%"}}),
            "strategy.rolling: maxSurge and maxUnavailable cannot both be 0",
        ),
        (
            spec(strategy={"type": "rolling", "rolling": {"deployment": "My_App"}}),
            "strategy.rolling.deployment: 'My_App' is not a DNS-1123 label",
        ),
        (
            spec(strategy={"type": "recreate", "recreate": {"progressDeadline": "0s"}}),
            "strategy.recreate.progressDeadline: must be at least 1s",
        ),
        (
            spec(strategy={"type": "recreate", "recreate": {"replicas": 2}}),
            "strategy.recreate.replicas: is not a known field",
        ),
        (spec(strategy={"type": "abTest"}), "(spec): analysis: an abTest compares variant B with variant A"),
        (
            spec(strategy={"type": "abTest"}, analysis={"prometheus": {"url": "http://p:9090"}}),
            "(spec): analysis.checks: an abTest compares variant B with variant A",
        ),
        (
            spec(strategy={"type": "abTest", "abTest": {"match": [{"headers": {"Canary": {"exact": "true"}}}]}}),
            "strategy.abTest.match[0].headers: header names must be lower-case",
        ),
        (
            spec(strategy={"type": "abTest", "abTest": {"match": [{"headers": {"canary": {"exact": "a", "prefix": "b"}}}]}}),
            "strategy.abTest.match[0].headers.canary: must be exactly one of exact, prefix, regex",
        ),
        (
            spec(strategy={"type": "abTest", "abTest": {"match": [{"cookies": {"a": {"exact": "1"}, "b": {"exact": "2"}}}]}}),
            "strategy.abTest.match[0].cookies: at most one cookie per match",
        ),
        (
            spec(strategy={"type": "abTest", "abTest": {"match": [{"cookies": {"user": {"regex": "("}}}]}}),
            "strategy.abTest.match[0].cookies.user: regex '(' does not compile",
        ),
        (
            spec(strategy={"type": "abTest", "abTest": {"match": [{}]}}),
            "strategy.abTest.match[0]: needs headers or cookies",
        ),
        (
            spec(strategy={"type": "abTest", "abTest": {"unmatchedWeight": 100}}),
            "strategy.abTest.unmatchedWeight: Input should be less than or equal to 99",
        ),
        (
            spec(strategy={"type": "abTest", "abTest": {"duration": "forever"}}),
            "strategy.abTest.duration: 'forever' is not a duration",
        ),
        (
            spec(
                strategy={"type": "rolling"},
                analysis={"prometheus": {"url": "http://p:9090"}, "checks": [{"name": "e", "query": "q", "relative": {"maxRatio": 2}}]},
            ),
            "(spec): analysis.checks[0].relative: rolling runs one version at a time",
        ),
        (
            spec(
                strategy={"type": "abTest"},
                analysis={"prometheus": {"url": "http://p:9090"}, "checks": [{"name": "e", "query": "q", "relative": {}}]},
            ),
            "analysis.checks[0].relative: needs maxIncrease, maxRatio, minIncrease or minRatio",
        ),
        (
            spec(
                strategy={"type": "blueGreen"},
                analysis={"prometheus": {"url": "http://p:9090"}, "checks": [{"name": "e", "query": "q", "relative": {"maxRatio": 2}}]},
            ),
            "(spec): analysis.checks[0].relative: blueGreen measures after the switch, when only the new colour has traffic",
        ),
        (
            spec(strategy={"type": "blueGreen", "blueGreen": {"scaleDownDelay": "0s"}}, analysis={"prometheus": {"url": "http://p:9090"}}),
            "(spec): strategy.blueGreen.scaleDownDelay: 0s leaves no time to analyse the new colour",
        ),
        (
            spec(
                strategy={"type": "abTest", "abTest": {"duration": "336h"}},
                analysis={"prometheus": {"url": "http://p:9090"}, "checks": [{"name": "e", "query": "q", "relative": {"maxIncrease": 0}}]},
            ),
            "(spec): analysis.interval: 30s over the 336h this plan observes is 40,320 measurements, more than one run holds",
        ),
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
        ("just a string", "(spec): is a string; it must be a mapping"),
    ],
)
def test_bad_specs_name_the_field_and_the_problem(document: Any, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(document)), problems(document)


def test_a_plan_short_of_100_is_refused_when_submitted_but_a_running_one_still_decodes() -> None:
    """The rule is newer than runs that may be in flight: their input must replay as it was."""
    steps = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}]
    document = spec(strategy={"type": "canary", "canary": {"steps": steps}})
    assert problems(document) == [
        "strategy.canary.steps: the last setWeight is 50, so the plan never reaches 100%; "
        "add a setWeight: 100 step or set promoteFromLastWeight: true"
    ]
    assert DeploymentSpec.model_validate(document).canary.steps[-1].set_weight == 50
    explicit = spec(strategy={"type": "canary", "canary": {"steps": steps, "promoteFromLastWeight": True}})
    assert parse_spec(explicit).canary.promote_from_last_weight is True


def test_every_problem_is_reported_at_once() -> None:
    found = problems(spec(app="", image="", replicas=-1))
    assert [p.split(":")[0] for p in found] == ["app", "image", "replicas"]


def test_spec_round_trips_through_json() -> None:
    parsed = parse_spec(
        spec(strategy={"type": "blueGreen", "blueGreen": {"approval": {"timeout": "1h"}, "scaleDownDelay": "90s"}})
    )
    assert DeploymentSpec.model_validate_json(parsed.model_dump_json()) == parsed


AB_ANALYSIS = {
    "prometheus": {"url": "http://prometheus:9090"},
    "checks": [{"name": "error-rate", "query": 'errors{version="{{version}}"}', "relative": {"maxIncrease": 0}}],
}


def test_the_three_other_strategies_have_defaults() -> None:
    rolling = parse_spec(spec(strategy={"type": "rolling"}))
    assert rolling.rolling.deployment is None and rolling.in_place is rolling.rolling
    # a Deployment without a strategy gets Kubernetes' defaults; one that has them is left alone
    assert rolling.rolling.deployment_strategy(None) == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    own = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}
    assert rolling.rolling.deployment_strategy(own) is None
    recreating = {"type": "Recreate"}
    assert rolling.rolling.deployment_strategy(recreating)["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}
    assert parse_spec(spec(strategy={"type": "rolling", "rolling": {"maxSurge": "1"}})).rolling.max_surge == 1
    recreate = parse_spec(spec(strategy={"type": "recreate"}))
    assert recreate.recreate.progress_deadline == timedelta(minutes=10) and recreate.recreate.pause is None
    ab = parse_spec(spec(strategy={"type": "abTest"}, analysis=AB_ANALYSIS))
    settings = ab.ab_test
    assert (settings.unmatched_weight, settings.duration, settings.pause) == (0, timedelta(minutes=10), None)
    assert [m.istio() for m in settings.match] == [{"headers": {"canary": {"exact": "true"}}}]  # the seed's header
    assert ab.istio.virtual_service.name == "myapp" and ab.routed is settings


@pytest.mark.parametrize(
    ("matcher", "cookie", "matches"),
    [
        ({"exact": "b"}, "variant=b", True),
        ({"exact": "b"}, "session=1; variant=b; theme=dark", True),
        ({"exact": "b"}, "variant=bb", False),
        ({"exact": "b"}, "xvariant=b", False),
        ({"prefix": "beta"}, "a=1;variant=beta-7", True),
        ({"prefix": "beta"}, "variant=alpha", False),
        ({"regex": "[0-9]+"}, "variant=42", True),
        ({"regex": "[0-9]+"}, "variant=4x", False),
    ],
)
def test_a_cookie_becomes_a_regex_on_the_cookie_header(matcher: dict[str, str], cookie: str, matches: bool) -> None:
    import re

    parsed = parse_spec(
        spec(strategy={"type": "abTest", "abTest": {"match": [{"cookies": {"variant": matcher}}]}}, analysis=AB_ANALYSIS)
    )
    istio = parsed.ab_test.match[0].istio()
    pattern = istio["headers"]["cookie"]["regex"]
    assert (re.fullmatch(pattern, cookie) is not None) is matches  # Istio (RE2) matches the whole value
