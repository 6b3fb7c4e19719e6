"""How each simulated version behaves, chosen by its image.

The sandbox has no real containers, so a table maps image globs to a behaviour: the error rate and
latency its requests see, and whether its pods get ready and pass /health. The default table
(`rules.yaml` beside this module) gives tags ending in `-bad`, `-slow`, `-crash` and `-unhealthy`
their meaning; a user file (`python -m sandbox --rules FILE`) is consulted before it::

    rules = Rules.load(Path("my-rules.yaml"))
    rules.behaviour("shop:2.0-bad").error_rate  # 0.2
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["Behaviour", "Rule", "Rules", "RulesError", "parse_rules"]

Z99 = 2.3263478740408408  # the standard normal's 0.99 quantile
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*$")


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file, the rule and the field."""


@dataclass(frozen=True)
class Behaviour:
    """What requests served by one image see; the defaults are a healthy version."""

    error_rate: float = 0.001
    p50: float = 0.03
    p99: float = 0.08
    ready: bool = True
    healthy: bool = True

    @property
    def mu(self) -> float:
        """The lognormal's location: its median is p50."""
        return math.log(self.p50)

    @property
    def sigma(self) -> float:
        """The lognormal's shape, so that its 0.99 quantile is p99."""
        return (math.log(self.p99) - math.log(self.p50)) / Z99


@dataclass(frozen=True)
class Rule:
    image: str  # an fnmatch glob over the whole image string
    behaviour: Behaviour
    source: str  # where it was written, e.g. "rules.yaml rules[2]"


def _seconds(value: Any) -> Any:
    """Accept 0.03, "30ms" or "2s"; anything else is left for pydantic to reject."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        number = float(match.group(1))
        return number / 1000 if match.group(2) == "ms" else number
    return value


_DEFAULT = Behaviour()


class _Latency(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p50: float = Field(default=_DEFAULT.p50, gt=0, allow_inf_nan=False)
    p99: float = Field(default=_DEFAULT.p99, gt=0, allow_inf_nan=False)

    _seconds = field_validator("p50", "p99", mode="before")(_seconds)

    @model_validator(mode="after")
    def _ordered(self) -> _Latency:
        if self.p99 < self.p50:
            raise ValueError(f"p99 ({self.p99}) must not be below p50 ({self.p50})")
        return self


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    image: str = Field(min_length=1)
    error_rate: float = Field(default=_DEFAULT.error_rate, ge=0, le=1, alias="errorRate")
    latency: _Latency = Field(default_factory=_Latency)
    ready: bool = True
    healthy: bool = True


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[_Rule]


def _describe(error: Any, data: Any) -> str:
    """`rules[1] (image '*:v2'): errorRate: Input should be ... (got 2)` from one pydantic error."""
    loc = list(error["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        index = loc[1]
        where = f"rules[{index}]"
        rules = data.get("rules") if isinstance(data, dict) else None
        rule = rules[index] if isinstance(rules, list) and index < len(rules) else None
        if isinstance(rule, dict) and isinstance(rule.get("image"), str):
            where += f" (image {rule['image']!r})"
        loc = loc[2:]
    field = ".".join(str(part) for part in loc)
    got = "" if error["type"] in ("missing", "model_type", "extra_forbidden") else f" (got {error['input']!r})"
    return ": ".join(part for part in (where, field, f"{error['msg']}{got}") if part)


def parse_rules(text: str, source: str) -> list[Rule]:
    """Rules from YAML text (`rules: [...]`, or the bare list); `source` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RulesError(f"{source}: not valid YAML: {error}") from None
    if isinstance(data, list):
        data = {"rules": data}
    try:
        parsed = _RulesFile.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(_describe(e, data) for e in error.errors())
        raise RulesError(f"{source}: {problems}") from None
    return [
        Rule(
            image=rule.image,
            behaviour=Behaviour(
                error_rate=rule.error_rate,
                p50=rule.latency.p50,
                p99=rule.latency.p99,
                ready=rule.ready,
                healthy=rule.healthy,
            ),
            source=f"{source} rules[{index}]",
        )
        for index, rule in enumerate(parsed.rules)
    ]


def default_rules() -> list[Rule]:
    """The table shipped with the package (`sandbox/rules.yaml`)."""
    text = resources.files("sandbox").joinpath("rules.yaml").read_text(encoding="utf-8")
    return parse_rules(text, "rules.yaml")


class Rules:
    """An ordered rule table: the first glob that matches an image decides its behaviour."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._cache: dict[str, Behaviour] = {}  # looked up per request plan: fnmatch only once

    @classmethod
    def load(cls, user_file: Path | None = None) -> Rules:
        """The user's rules (if any) before the defaults."""
        user: list[Rule] = []
        if user_file is not None:
            try:
                text = Path(user_file).read_text(encoding="utf-8")
            except OSError as error:
                raise RulesError(f"{user_file}: cannot read the rules file: {error.strerror}") from None
            user = parse_rules(text, str(user_file))
        return cls([*user, *default_rules()])

    def rule_for(self, image: str) -> Rule | None:
        return next((rule for rule in self.rules if fnmatch.fnmatchcase(image, rule.image)), None)

    def behaviour(self, image: str) -> Behaviour:
        found = self._cache.get(image)
        if found is None:
            rule = self.rule_for(image)
            found = self._cache[image] = rule.behaviour if rule is not None else _DEFAULT
        return found

    def is_ready(self, image: str) -> bool:
        """For `ClusterEmulator(is_image_ready=...)`."""
        return self.behaviour(image).ready

    def is_healthy(self, image: str) -> bool:
        """For `ClusterEmulator(is_image_healthy=...)`."""
        return self.behaviour(image).healthy
