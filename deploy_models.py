"""The pydantic models tidegate's CLI, workflows and activities share.

Three groups live here, because all of them cross the Temporal boundary and must mean the same
thing on both sides of it:

- the deployment spec, the YAML contract a user keeps next to their service (camelCase fields,
  like Kubernetes manifests), validated completely before anything touches Temporal or a cluster;
- the run's state: phases, recorded events, signals' payloads, the status query and the result;
- the inputs of activities, so an activity's signature says exactly what it acts on.
"""

from __future__ import annotations

import difflib
import re
from datetime import datetime, timedelta
from enum import StrEnum
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

# ---------------------------------------------------------------------------------------------
# Durations: "30s", "10m", "1h30m", as Kubernetes users write them.

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(rf"^(?:{_DURATION_PART.pattern})+$")


def parse_duration(value: Any) -> timedelta:
    """Parse `30s`, `10m`, `1h30m`, `250ms` (or pass a timedelta through)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str) and _DURATION.match(value.strip()):
        seconds = sum(
            float(number) * _DURATION_UNITS[unit]
            for number, unit in _DURATION_PART.findall(value.strip())
        )
        return timedelta(seconds=seconds)
    if isinstance(value, str) and value.strip().startswith("-") and _DURATION.match(value.strip()[1:]):
        raise ValueError(f"{value!r} is negative (a duration is 0s or more)")
    raise ValueError(f"{value!r} is not a duration (write it as e.g. 30s, 10m, 1h)")


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way it is written in a spec (`1h30m`, `45s`, `250ms`)."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    if total_ms % 1000:
        return f"{total_ms}ms"
    seconds = total_ms // 1000
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _non_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]

# ---------------------------------------------------------------------------------------------
# Names

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
IMAGE_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
# `{app}-green` must itself be a valid name, so an app name leaves room for the longest suffix.
MAX_APP_NAME = 63 - len("-canary")


def dns_label(value: str) -> str:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label "
            "(lower-case letters, digits and '-', starting and ending with a letter or digit, "
            "at most 63 characters)"
        )
    return value


DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _matching(value: str, pattern: re.Pattern[str], limit: int, what: str) -> str:
    if len(value) > limit or not pattern.match(value):
        raise ValueError(f"{value!r} is not {what}")
    return value


def _dns_subdomain(value: str) -> str:
    """An object name such as an Istio VirtualService's: DNS-1123 labels joined by '.'."""
    return _matching(
        value,
        DNS1123_SUBDOMAIN,
        253,
        "a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)",
    )


def _label_value(value: str) -> str:
    """A subset name is also the pods' `version` label value, so it must be a valid one."""
    return _matching(
        value,
        LABEL_VALUE,
        63,
        "a Kubernetes label value (letters, digits, '-', '_' and '.', starting and ending with a letter or digit, "
        "at most 63 characters)",
    )


class Model(BaseModel):
    """Base of every tidegate model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        serialize_by_alias=True,
    )


# ---------------------------------------------------------------------------------------------
# The deployment spec


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
HTTP_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class SecretKeyRef(Model):
    """A key of a Kubernetes Secret in the deployment's namespace."""

    name: str
    key: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _dns_subdomain(value)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        return _matching(value, SECRET_KEY, 253, "a Secret key (letters, digits, '-', '_' and '.')")


class SecretRef(Model):
    """A secret value the worker reads only when it needs it, from its environment (`env`) or a
    Kubernetes Secret (`secretKeyRef`), so that the workflow history holds the name, not the value."""

    env: str | None = None
    secret_key_ref: SecretKeyRef | None = None

    @field_validator("env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.secret_key_ref is None):
            raise ValueError("set exactly one of env and secretKeyRef")
        return self

    def describe(self) -> str:
        ref = self.secret_key_ref
        return f"${self.env}" if ref is None else f"Secret {ref.name} key {ref.key}"


class HeaderValue(Model):
    """A request header's `value`, or `valueFrom` a secret (a token, an API key)."""

    value: str | None = None
    value_from: SecretRef | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, data: Any) -> Any:
        return {"value": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_source(self) -> HeaderValue:
        if (self.value is None) == (self.value_from is None):
            raise ValueError("set exactly one of value and valueFrom")
        return self


class SmokeTest(Model):
    """An HTTP GET that must answer `expectStatus` before traffic is moved.

    `url` may use `{app}`, `{namespace}`, `{colour}` (the new colour) and `{service}` (the
    preview service, or the new colour's Deployment name when there is none).
    """

    url: str
    expect_status: int = Field(200, ge=100, le=599)
    timeout: Duration = timedelta(seconds=5)
    retries: int = Field(3, ge=0, le=100)
    interval: Duration = timedelta(seconds=2)
    headers: dict[str, HeaderValue] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, HeaderValue]) -> dict[str, HeaderValue]:
        for name in headers:
            if not HTTP_HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
        return headers

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        try:
            value.format(app="a", namespace="n", colour="c", service="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"{value!r} uses an unknown placeholder {exc} "
                "(known: {app}, {namespace}, {colour}, {service})"
            ) from None
        return value

    @field_validator("timeout", "interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


class Approval(Model):
    """A manual gate: the run waits for an `approve` signal, and aborts after `timeout`."""

    timeout: Duration | None = None

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


class BlueGreenSettings(Model):
    active_service: str | None = None
    preview_service: str | None = None
    smoke_test: SmokeTest | None = None
    approval: Approval | None = None
    scale_down_delay: Duration = timedelta(minutes=10)
    progress_deadline: Duration = timedelta(minutes=10)

    @field_validator("active_service", "preview_service")
    @classmethod
    def _service_name(cls, value: str | None) -> str | None:
        return None if value is None else dns_label(value)

    @field_validator("scale_down_delay")
    @classmethod
    def _delay(cls, value: timedelta) -> timedelta:
        return _non_negative(value)

    @field_validator("progress_deadline")
    @classmethod
    def _deadline(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value

    @model_validator(mode="after")
    def _distinct_services(self) -> BlueGreenSettings:
        if self.preview_service is not None and self.preview_service == self.active_service:
            raise ValueError("previewService must differ from activeService")
        return self


# ---------------------------------------------------------------------------------------------
# Analysis: PromQL checks measured during pauses (shared by every strategy that measures)

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z]+)\s*\}\}")
QUERY_PLACEHOLDERS = ("app", "namespace", "version", "canary", "stable")

# The seed's two checks, made correct: the canary's own requests (filtered by its version label),
# and a p99 that aggregates the buckets by `le` before taking the quantile.
# A version that never answered a 5xx has no 5xx series at all (a series appears with its first
# request): `or on() vector(0)` makes that an error rate of 0, while no traffic at all (an empty
# denominator) stays no data.
# Measurements one run can hold: each adds about 20 history events (the measurement, the weight
# check, the timer, the workflow tasks), and Temporal ends a run at 51,200 events. A wait for a
# person is kept within the same budget while it runs (workflows.common.HISTORY_BUDGET).
MEASUREMENT_BUDGET = 2_000
EVENTS_PER_MEASUREMENT = 20

DEFAULT_ERROR_RATE_QUERY = (
    '(sum(rate(http_requests_total{app="{{app}}",namespace="{{namespace}}",version="{{version}}",status=~"5.."}[1m]))'
    " or on() vector(0))"
    ' / sum(rate(http_requests_total{app="{{app}}",namespace="{{namespace}}",version="{{version}}"}[1m]))'
)
DEFAULT_P99_QUERY = (
    "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket"
    '{app="{{app}}",namespace="{{namespace}}",version="{{version}}"}[1m])))'
)


def render_query(template: str, **values: str) -> str:
    """Fill `{{app}}`, `{{namespace}}`, `{{version}}`, `{{canary}}`, `{{stable}}` in a PromQL template."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


class RelativeBound(Model):
    """The canary (A/B: variant B) compared with stable (variant A) over the same window.

    For metrics where lower is better (errors, latency):
    `maxIncrease`: canary ≤ stable + maxIncrease (absolute, e.g. 0.005 = half a point of error rate;
    negative: the canary must be better by at least that much);
    `maxRatio`: canary ≤ stable × maxRatio (e.g. 1.2 for latency; below 1: better by that factor).
    For metrics where higher is better (conversions, revenue):
    `minIncrease`: canary ≥ stable + minIncrease (negative: a tolerated drop);
    `minRatio`: canary ≥ stable × minRatio (e.g. 1.05: at least 5% better).
    """

    max_increase: float | None = None
    max_ratio: float | None = Field(None, gt=0)
    min_increase: float | None = None
    min_ratio: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_bound(self) -> RelativeBound:
        if all(getattr(self, name) is None for name in ("max_increase", "max_ratio", "min_increase", "min_ratio")):
            raise ValueError("needs maxIncrease, maxRatio, minIncrease or minRatio")
        return self


class Check(Model):
    """One PromQL measurement with its bounds; `{{version}}` is the variant measured."""

    name: str = Field(min_length=1)
    query: str = Field(min_length=1)
    max: float | None = None
    min: float | None = None
    relative: RelativeBound | None = None

    @field_validator("query")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        unknown = sorted({name for name in PLACEHOLDER.findall(value) if name not in QUERY_PLACEHOLDERS})
        if unknown:
            raise ValueError(
                f"uses unknown placeholder(s) {', '.join(unknown)} "
                f"(known: {', '.join('{{' + p + '}}' for p in QUERY_PLACEHOLDERS)})"
            )
        return value

    @model_validator(mode="after")
    def _bounded(self) -> Check:
        if self.max is None and self.min is None and self.relative is None:
            raise ValueError(f"check {self.name!r} needs max, min or relative")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"check {self.name!r}: min {self.min} is above max {self.max}")
        return self


def default_checks() -> list[Check]:
    return [
        Check(name="error-rate", query=DEFAULT_ERROR_RATE_QUERY, max=0.01),
        Check(name="p99-latency", query=DEFAULT_P99_QUERY, max=1.0),
    ]


class PrometheusSource(Model):
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/")


class Analysis(Model):
    """How a new version is judged: checks measured every `interval` while a step waits.

    A measurement fails when a value breaks a bound; it is inconclusive when a query returns no
    data or NaN (never a pass), and an error when Prometheus cannot answer. More than
    `failureLimit` failures, `inconclusiveLimit` inconclusive results, or `consecutiveErrorLimit`
    errors in a row end the analysis as failed.
    """

    prometheus: PrometheusSource
    interval: Duration = timedelta(seconds=30)
    checks: list[Check] = Field(default_factory=default_checks, min_length=1)
    failure_limit: int = Field(0, ge=0)
    inconclusive_limit: int = Field(4, ge=0)
    consecutive_error_limit: int = Field(4, ge=0)

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Analysis:
        names = [check.name for check in self.checks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"check names must be unique: {', '.join(duplicates)} repeated")
        return self


# ---------------------------------------------------------------------------------------------
# Canary: Argo Rollouts' step vocabulary over Istio weights


class Pause(Model):
    """`pause: {duration: 10m}` is a durable timer; `pause: {}` waits for an approve signal."""

    duration: Duration | None = None


class OneOffAnalysis(Model):
    """A one-off check: measure now (re-measuring inconclusive results up to the limits)."""

    checks: list[str] | None = None  # names of the top-level analysis checks; default all


class CanaryStep(Model):
    """One step, exactly one of: `setWeight: N`, `pause: {...}`, `analysis: {...}`."""

    set_weight: int | None = Field(None, gt=0, le=100)
    pause: Pause | None = None
    analysis: OneOffAnalysis | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CanaryStep:
        chosen = [name for name in ("set_weight", "pause", "analysis") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError("must be exactly one of setWeight, pause, analysis")
        return self


def seed_canary_steps() -> list[CanaryStep]:
    """The seed's plan: 5% → 25% → 50% → 100%, observing 10 minutes after each change."""
    steps: list[CanaryStep] = []
    for weight in (5, 25, 50, 100):
        steps += [CanaryStep(set_weight=weight), CanaryStep(pause=Pause(duration=timedelta(minutes=10)))]
    return steps


class VirtualServiceRef(Model):
    """The Istio VirtualService whose weights move; `route` names the http route to edit."""

    name: str
    route: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _dns_subdomain(value)


class DestinationRuleRef(Model):
    """Subsets of the DestinationRule; a subset selects pods whose `version` label is its name."""

    name: str
    stable_subset_name: str = "v1"
    canary_subset_name: str = "v2"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _dns_subdomain(value)

    @field_validator("stable_subset_name", "canary_subset_name")
    @classmethod
    def _subset(cls, value: str) -> str:
        return _label_value(value)

    @model_validator(mode="after")
    def _distinct(self) -> DestinationRuleRef:
        if self.stable_subset_name == self.canary_subset_name:
            raise ValueError("stableSubsetName and canarySubsetName must differ")
        return self


class IstioRouting(Model):
    virtual_service: VirtualServiceRef
    destination_rule: DestinationRuleRef


class TrafficRouting(Model):
    istio: IstioRouting


# The validation context of a spec being submitted (parse_spec). Rules that refuse specs an
# earlier version accepted apply only then: a running deployment's input, decoded again when its
# history is replayed, must stay valid.
SUBMITTED = "submitted"


class CanarySettings(Model):
    """The steps end at 100%, or say with `promoteFromLastWeight: true` that promotion may jump
    from the last weight to 100% at once (Argo Rollouts does so silently; here it is explicit)."""

    # declared before `steps`, so that the steps' validator sees it
    promote_from_last_weight: bool = False
    steps: list[CanaryStep] = Field(default_factory=seed_canary_steps, min_length=1)
    traffic_routing: TrafficRouting | None = None
    smoke_test: SmokeTest | None = None
    progress_deadline: Duration = timedelta(minutes=10)

    @field_validator("steps")
    @classmethod
    def _weights_never_decrease(cls, steps: list[CanaryStep], info: ValidationInfo) -> list[CanaryStep]:
        previous = 0
        for index, step in enumerate(steps):
            if step.set_weight is not None:
                if step.set_weight < previous:
                    raise ValueError(
                        f"step {index}: setWeight {step.set_weight} is lower than the previous weight "
                        f"{previous} (weights must not decrease)"
                    )
                previous = step.set_weight
        if previous == 0:
            raise ValueError("needs at least one setWeight step")
        submitted = bool(info.context and info.context.get(SUBMITTED))
        if previous < 100 and submitted and info.data.get("promote_from_last_weight") is False:
            raise ValueError(
                f"the last setWeight is {previous}, so the plan never reaches 100%; "
                "add a setWeight: 100 step or set promoteFromLastWeight: true"
            )
        return steps

    @field_validator("progress_deadline")
    @classmethod
    def _deadline(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value


# ---------------------------------------------------------------------------------------------
# A/B testing: a header or cookie route to variant B, judged against variant A


class StringMatch(Model):
    """Istio's StringMatch: exactly one of `exact`, `prefix`, `regex` (RE2, the whole value)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StringMatch:
        chosen = [name for name in ("exact", "prefix", "regex") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError("must be exactly one of exact, prefix, regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as error:
                raise ValueError(f"regex {self.regex!r} does not compile: {error}") from None
        return self

    def istio(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)

    def value_pattern(self) -> str:
        """A regex matching the values this matches (for a cookie inside the `cookie` header)."""
        if self.exact is not None:
            return re.escape(self.exact)
        if self.prefix is not None:
            return re.escape(self.prefix) + "[^;]*"
        return f"(?:{self.regex})"


HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
COOKIE_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class AbMatch(Model):
    """One of Istio's HTTPMatchRequests: every header and the cookie must match (AND).

    A list of them matches when any one does (OR). Istio has no cookie matcher of its own: a
    cookie becomes a regex on the `cookie` header, so one match holds at most one cookie.
    """

    headers: dict[str, StringMatch] = Field(default_factory=dict)
    cookies: dict[str, StringMatch] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, StringMatch]) -> dict[str, StringMatch]:
        bad = sorted(name for name in headers if not HEADER_NAME.match(name))
        if bad:
            raise ValueError(f"header names must be lower-case letters, digits and '-' (Istio): {', '.join(bad)}")
        return headers

    @field_validator("cookies")
    @classmethod
    def _cookie_names(cls, cookies: dict[str, StringMatch]) -> dict[str, StringMatch]:
        bad = sorted(name for name in cookies if not COOKIE_NAME.match(name))
        if bad:
            raise ValueError(f"not valid cookie names: {', '.join(bad)}")
        if len(cookies) > 1:
            raise ValueError(
                "at most one cookie per match (Istio matches cookies through the one `cookie` header); "
                "list several matches to match any of them"
            )
        return cookies

    @model_validator(mode="after")
    def _something(self) -> AbMatch:
        if not self.headers and not self.cookies:
            raise ValueError("needs headers or cookies")
        if self.cookies and "cookie" in self.headers:
            raise ValueError("cannot match both the `cookie` header and cookies")
        return self

    def istio(self) -> dict[str, Any]:
        """This match as an Istio HTTPMatchRequest."""
        headers = {name: match.istio() for name, match in self.headers.items()}
        for name, match in self.cookies.items():
            headers["cookie"] = {"regex": rf"^(.*;\s*)?{re.escape(name)}={match.value_pattern()}(;.*)?$"}
        return {"headers": headers}


def seed_match() -> list[AbMatch]:
    """The seed's mechanism: requests with the header `canary: "true"` go to the new version."""
    return [AbMatch(headers={"canary": StringMatch(exact="true")})]


def _at_least_a_second(value: timedelta) -> timedelta:
    if value < timedelta(seconds=1):
        raise ValueError("must be at least 1s")
    return value


class AbTestSettings(Model):
    """Variant A is `{app}-stable` (the stable subset), variant B `{app}-canary` (the canary subset).

    Requests matching `match` go to B; `unmatchedWeight` percent of the others too (default 0).
    The analysis measures both variants every interval for `duration`; B must stay within the
    relative bounds of the checks. Then B is promoted, or with `pause` the run waits (for its
    duration, or for approve/abort when it has none) while the figures of both are shown.
    """

    match: list[AbMatch] = Field(default_factory=seed_match, min_length=1)
    unmatched_weight: int = Field(0, ge=0, le=99)
    duration: Duration = timedelta(minutes=10)
    pause: Pause | None = None
    traffic_routing: TrafficRouting | None = None
    smoke_test: SmokeTest | None = None
    progress_deadline: Duration = timedelta(minutes=10)

    @field_validator("duration", "progress_deadline")
    @classmethod
    def _long_enough(cls, value: timedelta) -> timedelta:
        return _at_least_a_second(value)


# ---------------------------------------------------------------------------------------------
# Rolling update and recreate: the app's own Deployment, changed in place

INT_OR_PERCENT = re.compile(r"^(\d+)%?$")


class InPlaceSettings(Model):
    """What rolling and recreate share: the Deployment (default: the app's name) and container
    (default: the only one, or the one named like the app) whose image changes, the checks after
    the rollout, and an optional pause (`pause: {}`: wait for approval) before finishing."""

    deployment: str | None = None
    container: str | None = None
    progress_deadline: Duration = timedelta(minutes=10)
    smoke_test: SmokeTest | None = None
    analysis_window: Duration = timedelta(minutes=10)
    pause: Pause | None = None

    @field_validator("deployment", "container")
    @classmethod
    def _deployment(cls, value: str | None) -> str | None:
        return None if value is None else dns_label(value)

    @field_validator("progress_deadline", "analysis_window")
    @classmethod
    def _long_enough(cls, value: timedelta) -> timedelta:
        return _at_least_a_second(value)


class RollingSettings(InPlaceSettings):
    """`maxSurge` / `maxUnavailable`: a count or a percentage, Kubernetes' default 25% when unset."""

    max_surge: int | str | None = None
    max_unavailable: int | str | None = None

    @field_validator("max_surge", "max_unavailable")
    @classmethod
    def _int_or_percent(cls, value: int | str | None) -> int | str | None:
        if value is None or (isinstance(value, int) and value >= 0):
            return value
        if isinstance(value, str) and INT_OR_PERCENT.match(value):
            return value if value.endswith("%") else int(value)
        raise ValueError(f"{value!r} is not a count or a percentage (e.g. 1 or 25%)")

    @model_validator(mode="after")
    def _can_progress(self) -> RollingSettings:
        if self.max_surge is not None and self.max_unavailable is not None:
            if str(self.max_surge).rstrip("%") == "0" and str(self.max_unavailable).rstrip("%") == "0":
                raise ValueError("maxSurge and maxUnavailable cannot both be 0 (the rollout could never progress)")
        return self

    def deployment_strategy(self, current: dict[str, Any] | None) -> dict[str, Any] | None:
        """The Deployment's `spec.strategy` for this update: what the spec sets, over what the
        Deployment has (Kubernetes' 25% where neither says); None when that changes nothing."""
        current = current or {}
        own = current.get("rollingUpdate") or {} if current.get("type", "RollingUpdate") == "RollingUpdate" else {}
        wanted = {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": own.get("maxSurge", "25%") if self.max_surge is None else self.max_surge,
                "maxUnavailable": own.get("maxUnavailable", "25%") if self.max_unavailable is None else self.max_unavailable,
            },
        }
        return None if wanted == current else wanted


class RecreateSettings(InPlaceSettings):
    """Old pods all go, then the new ones start: the downtime between is measured and reported."""


StrategyType = Literal["recreate", "rolling", "blueGreen", "canary", "abTest"]
IMPLEMENTED_STRATEGIES: tuple[str, ...] = ("recreate", "rolling", "blueGreen", "canary", "abTest")
STRATEGY_SETTINGS = {  # strategy.type → (the field of its settings, their model)
    "blueGreen": ("blue_green", BlueGreenSettings),
    "canary": ("canary", CanarySettings),
    "abTest": ("ab_test", AbTestSettings),
    "rolling": ("rolling", RollingSettings),
    "recreate": ("recreate", RecreateSettings),
}


class Strategy(Model):
    type: StrategyType
    blue_green: BlueGreenSettings | None = None
    canary: CanarySettings | None = None
    ab_test: AbTestSettings | None = None
    rolling: RollingSettings | None = None
    recreate: RecreateSettings | None = None

    @field_validator("type")
    @classmethod
    def _implemented(cls, value: str) -> str:
        if value not in IMPLEMENTED_STRATEGIES:
            raise ValueError(
                f"{value!r} is not implemented yet (implemented: {', '.join(IMPLEMENTED_STRATEGIES)})"
            )
        return value

    @model_validator(mode="after")
    def _settings_match_type(self) -> Strategy:
        for name, (field, settings) in STRATEGY_SETTINGS.items():
            if name == self.type and getattr(self, field) is None:
                setattr(self, field, settings())
            if getattr(self, field) is not None and name != self.type:
                raise ValueError(f"strategy.{name} is set but strategy.type is {self.type!r}")
        return self


# ---------------------------------------------------------------------------------------------
# Notifications: phase changes posted to webhooks (generic JSON or Slack's incoming webhooks)

NOTIFY_EVENTS = ("started", "awaitingApproval", "promoted", "rolledBack", "aborted", "failed")
NotifyEvent = Literal["started", "awaitingApproval", "promoted", "rolledBack", "aborted", "failed"]


class Webhook(Model):
    """Where phase changes are posted: `url`, or `urlFrom: {env: NAME}` when the URL is a secret
    (a Slack webhook URL is one). `format`: `generic` JSON or `slack` (`{"text": ...}`)."""

    url: str | None = None
    url_from: SecretRef | None = None
    format: Literal["generic", "slack"] = "generic"
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS), min_length=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Webhook:
        if (self.url is None) == (self.url_from is None):
            raise ValueError("set exactly one of url and urlFrom")
        return self


class Notifications(Model):
    webhooks: list[Webhook] = Field(default_factory=list)


class DeploymentSpec(Model):
    """What a user asks tidegate to do: which app, which image, which strategy."""

    app: str
    namespace: str = "default"
    image: str
    replicas: int = Field(3, ge=1, le=1000)
    container_port: int = Field(8080, ge=1, le=65535)
    strategy: Strategy
    analysis: Analysis | None = None
    notifications: Notifications | None = None

    @field_validator("app")
    @classmethod
    def _app(cls, value: str) -> str:
        dns_label(value)
        if len(value) > MAX_APP_NAME:
            raise ValueError(
                f"{value!r} is longer than {MAX_APP_NAME} characters "
                "(tidegate adds suffixes such as '-canary' to it)"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return dns_label(value)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if not IMAGE_REFERENCE.match(value):
            raise ValueError(f"{value!r} is not an image reference (e.g. registry/myapp:2.0)")
        return value

    @model_validator(mode="after")
    def _analysis_steps_have_checks(self) -> DeploymentSpec:
        if self.strategy.canary is None:
            return self
        known = {check.name for check in self.analysis.checks} if self.analysis else set()
        for index, step in enumerate(self.strategy.canary.steps):
            if step.analysis is None:
                continue
            if self.analysis is None:
                raise ValueError(f"strategy.canary.steps[{index}].analysis needs the top-level analysis section")
            unknown = sorted(set(step.analysis.checks or ()) - known)
            if unknown:
                raise ValueError(
                    f"strategy.canary.steps[{index}].analysis.checks: unknown check(s) {', '.join(unknown)} "
                    f"(analysis.checks has {', '.join(sorted(known))})"
                )
        return self

    @model_validator(mode="after")
    def _analysis_fits_the_strategy(self) -> DeploymentSpec:
        """A/B compares B with A, so it needs a relative check; rolling and recreate run one
        version at a time, and blue/green measures when only the new colour serves, so they have
        nothing to compare with."""
        checks = self.analysis.checks if self.analysis else []
        if self.strategy.type == "abTest" and not any(check.relative for check in checks):
            where = "analysis.checks" if self.analysis else "analysis"
            raise ValueError(
                f"{where}: an abTest compares variant B with variant A: it needs at least one check with "
                "`relative` bounds (e.g. relative: {maxIncrease: 0} for an error rate)"
            )
        one_version = {
            "rolling": "rolling runs one version at a time",
            "recreate": "recreate runs one version at a time",
            "blueGreen": "blueGreen measures after the switch, when only the new colour has traffic",
        }.get(self.strategy.type)
        if one_version is not None:
            for index, check in enumerate(checks):
                if check.relative is not None:
                    raise ValueError(
                        f"analysis.checks[{index}].relative: {one_version}, "
                        "so there is no stable version to compare with (use min/max)"
                    )
        if self.analysis is not None:
            observed = self.observed_time()
            measurements = int(observed / self.analysis.interval)
            if measurements > MEASUREMENT_BUDGET:
                raise ValueError(
                    f"analysis.interval: {format_duration(self.analysis.interval)} over the "
                    f"{format_duration(observed)} this plan observes is {measurements:,} measurements, more than one "
                    f"run holds ({MEASUREMENT_BUDGET:,}: Temporal ends a run at 51,200 history events); measure less "
                    "often or observe for less time"
                )
        if self.strategy.type == "blueGreen" and self.analysis is not None:
            if self.blue_green.scale_down_delay <= timedelta(0):
                raise ValueError(
                    "strategy.blueGreen.scaleDownDelay: 0s leaves no time to analyse the new colour after the "
                    "switch (set a delay, or remove analysis)"
                )
        return self

    @property
    def blue_green(self) -> BlueGreenSettings:
        assert self.strategy.blue_green is not None
        return self.strategy.blue_green

    @property
    def active_service(self) -> str:
        return self.blue_green.active_service or self.app

    @property
    def canary(self) -> CanarySettings:
        assert self.strategy.canary is not None
        return self.strategy.canary

    @property
    def ab_test(self) -> AbTestSettings:
        assert self.strategy.ab_test is not None
        return self.strategy.ab_test

    @property
    def rolling(self) -> RollingSettings:
        assert self.strategy.rolling is not None
        return self.strategy.rolling

    @property
    def recreate(self) -> RecreateSettings:
        assert self.strategy.recreate is not None
        return self.strategy.recreate

    def observed_time(self) -> timedelta:
        """How long the plan's timed waits measure, all together (waits for a person excluded)."""
        def timed(pause: Pause | None) -> timedelta:
            return pause.duration if pause is not None and pause.duration is not None else timedelta(0)

        strategy = self.strategy
        if strategy.canary is not None:
            return sum((timed(step.pause) for step in strategy.canary.steps), timedelta(0))
        if strategy.ab_test is not None:
            return strategy.ab_test.duration + timed(strategy.ab_test.pause)
        if strategy.blue_green is not None:
            return strategy.blue_green.scale_down_delay
        settings = strategy.rolling or strategy.recreate
        return settings.analysis_window + timed(settings.pause) if settings is not None else timedelta(0)

    @property
    def in_place(self) -> InPlaceSettings:
        """The settings of a rolling or recreate run."""
        settings = self.strategy.rolling or self.strategy.recreate
        assert settings is not None
        return settings

    @property
    def routed(self) -> CanarySettings | AbTestSettings:
        """The settings of a strategy that moves traffic through Istio: canary or abTest."""
        settings = self.strategy.canary or self.strategy.ab_test
        assert settings is not None
        return settings

    @property
    def istio(self) -> IstioRouting:
        """The canary's (or A/B test's) Istio objects; both default to the app's name, as in the seed."""
        routing = self.routed.traffic_routing
        if routing is not None:
            return routing.istio
        return IstioRouting(
            virtual_service=VirtualServiceRef(name=self.app),
            destination_rule=DestinationRuleRef(name=self.app),
        )


class SpecError(ValueError):
    """A spec that cannot be deployed; each problem names its field path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + part
    return path or "(spec)"


def _fields_at(model: type[BaseModel], location: tuple[int | str, ...]) -> list[str]:
    """The fields (as a spec writes them) of the model found at `location` under `model`;
    none when the path leads elsewhere. Lists and mappings are stepped through by index or key."""
    annotation: Any = model
    for part in location:
        while get_origin(annotation) in (Union, UnionType, Annotated):
            members = [a for a in get_args(annotation) if a is not type(None)]
            annotation = members[0] if get_origin(annotation) is Annotated or len(members) == 1 else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
            field = next(
                (f for name, f in annotation.model_fields.items() if part in (name, f.alias)),
                None,
            )
            annotation = field.annotation if field is not None else None
        elif get_origin(annotation) is list and isinstance(part, int):
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return []
    while get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [field.alias or name for name, field in annotation.model_fields.items()]
    return []


def _unknown_field(model: type[BaseModel] | None, location: tuple[int | str, ...]) -> str:
    """`is not a known field`, with the field a typo most likely meant, or the ones there are."""
    known = _fields_at(model, location[:-1]) if model is not None else []
    if not known:
        return "is not a known field"
    close = difflib.get_close_matches(str(location[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"is not a known field (did you mean {close[0]}?)"
    return f"is not a known field (known here: {', '.join(known)})"


def describe_validation_error(error: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """One line per problem: `field.path: what is wrong` (`model`: the one validated, so that an
    unknown field can be matched with the field it misspells)."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = _unknown_field(model, tuple(item["loc"]))
        elif item["type"] == "missing":
            message = "is required"
        elif item["type"] == "literal_error":
            message = f"{item['input']!r} is not one of the choices: " + message.removeprefix(
                "Input should be "
            )
        problems.append(f"{_field_path(item['loc'])}: {message}")
    return problems


def parse_spec(document: Any) -> DeploymentSpec:
    """Validate a loaded YAML document; raise SpecError naming every bad field."""
    if not isinstance(document, dict):
        found = {type(None): "is empty", list: "is a list", str: "is a string"}.get(type(document), f"is {document!r}")
        raise SpecError([f"(spec): {found}; it must be a mapping with at least app, image and strategy"])
    try:
        return DeploymentSpec.model_validate(document, context={SUBMITTED: True})
    except ValidationError as error:
        raise SpecError(describe_validation_error(error, DeploymentSpec)) from None


def load_spec_file(path: str) -> DeploymentSpec:
    """Read and validate a spec file (YAML)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as error:
        raise SpecError([f"{path}: cannot be read ({error.strerror})"]) from None
    except yaml.YAMLError as error:
        raise SpecError([f"{path}: is not valid YAML ({error})"]) from None
    return parse_spec(document)


# ---------------------------------------------------------------------------------------------
# A run's state, as the status query, the UI and the result show it


class Phase(StrEnum):
    PENDING = "Pending"
    ROLLING_OUT = "RollingOut"
    SMOKE_TESTING = "SmokeTesting"
    AWAITING_APPROVAL = "AwaitingApproval"
    SWITCHING = "Switching"
    SHIFTING_TRAFFIC = "ShiftingTraffic"
    SCALING_DOWN = "ScalingDown"
    EXPERIMENTING = "Experimenting"
    OBSERVING = "Observing"
    ANALYSING = "Analysing"
    PROMOTING = "Promoting"
    KEEPING_PREVIOUS = "KeepingPrevious"
    CLEANING_UP = "CleaningUp"
    ROLLING_BACK = "RollingBack"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    FAILED = "Failed"


class Outcome(StrEnum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolledBack"
    ABORTED = "aborted"
    FAILED = "failed"


OUTCOME_PHASE = {
    Outcome.PROMOTED: Phase.PROMOTED,
    Outcome.ROLLED_BACK: Phase.ROLLED_BACK,
    Outcome.ABORTED: Phase.ABORTED,
    Outcome.FAILED: Phase.FAILED,
}


class Decision(Model):
    """The payload of approve / abort / rollback: who sent it and why."""

    by: str = Field(min_length=1)
    reason: str = ""


class Event(Model):
    """One line of a run's record: what happened, when, and (for signals) who asked."""

    at: datetime
    kind: str
    message: str
    by: str | None = None
    reason: str | None = None


class DeploymentInput(Model):
    spec: DeploymentSpec
    requested_by: str = "unknown"


class AdmissionRequest(Model):
    """Asks the worker whether it runs deployments of `app` in `namespace`, and who may approve."""

    namespace: str
    app: str


class Admission(Model):
    """The worker's answer: `approvers` of the app (None: whoever the starter names)."""

    approvers: list[str] | None = None


class Downtime(Model):
    """Recreate's known cost: from the moment no old pod was left to the first new pod ready.

    Both moments are observed by the polling activities (each is the time of the first poll that
    saw it, so they are accurate to a poll interval, 1 s); they are reported, never decided on.
    `endedAt` None: still down.
    """

    started_at: datetime
    ended_at: datetime | None = None
    seconds: float | None = None


class DeploymentResult(Model):
    outcome: Outcome
    reason: str
    by: str | None = None
    app: str
    namespace: str
    image: str
    active_version: str | None = None
    previous_version: str | None = None
    started_at: datetime
    finished_at: datetime
    previous_image: str | None = None  # what served before, so a later undo knows what to deploy
    failed_measurement: Measurement | None = None  # the measurement that ended the run
    downtime: Downtime | None = None  # recreate: the time no pod served
    events: list[Event] = []


class DeploymentStatus(Model):
    app: str
    namespace: str
    strategy: str
    image: str
    phase: Phase
    active_version: str | None = None
    new_version: str | None = None
    previous_version: str | None = None
    started_at: datetime
    updated_at: datetime
    timer_ends_at: datetime | None = None
    weight: int | None = None  # the canary's share of traffic, in percent
    step: int | None = None  # index of the canary step being carried out
    last_measurement: Measurement | None = None
    downtime: Downtime | None = None  # recreate: the time no pod served
    events: list[Event] = []
    result: DeploymentResult | None = None


# ---------------------------------------------------------------------------------------------
# Activity inputs and outputs


class ObjectRef(Model):
    namespace: str
    name: str


class ServiceRef(ObjectRef):
    """A Service and the pod label that decides which version it sends traffic to."""

    version_label: str = "version"


class WorkloadSpec(Model):
    """A Deployment tidegate owns: `{app}-{version}`, labelled `app` and `version`."""

    namespace: str
    name: str
    app: str
    version: str
    image: str
    replicas: int
    container_port: int
    progress_deadline_seconds: int
    version_label: str = "version"


class RolloutWait(Model):
    """Wait for a Deployment's rollout; `deadline` is fixed by the workflow, not the activity."""

    namespace: str
    name: str
    deadline: datetime
    poll_interval: Duration = timedelta(seconds=1)


class RolloutState(Model):
    replicas: int
    updated_replicas: int
    ready_replicas: int
    available_replicas: int
    complete: bool
    message: str


class ServiceSwitch(Model):
    """Point a Service's selector at `to_version`, only if it is still at `from_version`.

    `from_version` None means the Service does not exist yet (a first deployment) and is created.
    `any_current` is for Services tidegate alone uses (the preview): whatever they select, switch.
    """

    namespace: str
    name: str
    app: str
    from_version: str | None
    to_version: str
    any_current: bool = False
    port: int = 80
    target_port: int
    version_label: str = "version"


class SmokeCheck(Model):
    url: str
    expect_status: int
    timeout: Duration
    namespace: str | None = None  # where a header's secretKeyRef is read
    headers: dict[str, HeaderValue] = Field(default_factory=dict)


class SmokeResult(Model):
    url: str
    status: int
    elapsed_ms: float


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"  # no data or NaN: never a pass
    ERROR = "error"  # Prometheus could not answer


class CheckOutcome(Model):
    """One check of one measurement: its value, the bound it was held to, and the query."""

    name: str
    verdict: Verdict
    value: float | None = None
    baseline: float | None = None  # the stable version's value, for relative checks
    bound: str
    query: str
    message: str


class Measurement(Model):
    at: datetime
    verdict: Verdict
    checks: list[CheckOutcome]


class MetricQuery(Model):
    """One rendered PromQL query, named for the record (e.g. `error-rate@canary`)."""

    name: str
    query: str


class MeasureRequest(Model):
    prometheus_url: str
    queries: list[MetricQuery]
    timeout: Duration = timedelta(seconds=10)


class MetricValue(Model):
    """What one query gave: a number, no data (`value` None), or an `error` naming the endpoint."""

    name: str
    query: str
    value: float | None = None
    error: str | None = None


class IstioTarget(Model):
    """The VirtualService route and DestinationRule subsets a canary moves weight between."""

    namespace: str
    app: str
    host: str  # the Service both subsets are reached through
    virtual_service: str
    route: str | None = None
    destination_rule: str
    stable_subset: str
    canary_subset: str
    version_label: str = "version"


class WeightChange(Model):
    """Set the canary's weight; `expected` is what tidegate last set (None: do not check)."""

    target: IstioTarget
    weight: int = Field(ge=0, le=100)
    expected: int | None = None


class ServiceSpec(Model):
    """A Service tidegate creates when it is missing (and otherwise leaves as it is)."""

    namespace: str
    name: str
    app: str
    selector: dict[str, str]
    port: int = 80
    target_port: int


class ScaleRequest(Model):
    namespace: str
    name: str
    replicas: int = Field(ge=0)


class MatchRoute(Model):
    """The A/B route: requests matching `match` (Istio HTTPMatchRequests) go to the canary subset.

    It is inserted first in the VirtualService's http routes and found again by its `name`.
    """

    target: IstioTarget
    name: str
    match: list[dict[str, Any]] = []

    def istio(self) -> dict[str, Any]:
        destination = {"host": self.target.host, "subset": self.target.canary_subset}
        return {"name": self.name, "match": self.match, "route": [{"destination": destination, "weight": 100}]}


class DeploymentTarget(Model):
    """A Deployment changed in place, and its container whose image changes (None: guess)."""

    namespace: str
    name: str
    app: str
    container: str | None = None


class DeploymentSnapshot(Model):
    """What a Deployment was before tidegate changed it: restoring this undoes the run."""

    namespace: str
    name: str
    resource_version: str
    replicas: int
    template: dict[str, Any]
    strategy: dict[str, Any] | None = None
    container: str
    container_index: int
    image: str
    version: str | None = None  # the pod template's `version` label


class DeploymentUpdate(Model):
    """Change a Deployment recorded in `snapshot`: the container's image (None: keep), the
    replicas (None: keep), the strategy (None: keep). Refused when the pod template is neither
    the recorded one nor the one this update makes (someone else changed it)."""

    snapshot: DeploymentSnapshot
    image: str | None = None
    replicas: int | None = Field(None, ge=0)
    strategy: dict[str, Any] | None = None


class DeploymentRestore(Model):
    """Put a Deployment back as `snapshot` recorded it, if its template is the recorded one or
    `applied_image` in the recorded one (what tidegate set); anything else is left alone."""

    snapshot: DeploymentSnapshot
    applied_image: str | None = None


class RestoreOutcome(Model):
    restored: bool
    message: str


class PodsWait(Model):
    """Wait until a Deployment's pods are all `gone`, or its first new pod is ready (`firstReady`)."""

    namespace: str
    name: str
    until: Literal["gone", "firstReady"]
    deadline: datetime
    poll_interval: Duration = timedelta(seconds=1)


class PodsObserved(Model):
    """When a poll first saw what was waited for (observed by the activity, reported only)."""

    at: datetime
    replicas: int
    ready_replicas: int
    message: str


class Notification(Model):
    """A phase change to announce (the `notify` activity's input). `key` is the same for every
    attempt, so a receiver can drop a duplicate; the worker adds its own webhooks to these."""

    key: str
    event: NotifyEvent
    app: str
    namespace: str
    strategy: str
    image: str
    phase: Phase
    message: str
    by: str | None = None
    workflow_id: str
    run_id: str
    at: datetime
    webhooks: list[Webhook] = []
