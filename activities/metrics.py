"""Canary analysis measurements: PromQL instant queries against Prometheus, one value each.

A query problem is a measurement result, not an activity failure: the workflow counts errors
against `consecutiveErrorLimit` and no data as inconclusive, so `measure` returns one
MetricValue per query, in order, and raises for nothing a query can do.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from temporalio import activity
from urllib3.util.retry import Retry

from deploy_models import MeasureRequest, MetricQuery, MetricValue

# The client's default retries 3 times with backoff (~7s on a 503): that would blow the
# timeout and hide errors the workflow must count. The workflow's interval is the retry.
_NO_RETRY = Retry(total=0, raise_on_status=False)


class _Answered(Exception):
    """Prometheus answered, but not 200; carries what it said (`error_type` empty: not Prometheus)."""

    def __init__(self, status: int, detail: str, error_type: str = "", error: str = "") -> None:
        super().__init__(f"answered {status}" + (f" {detail}" if detail else ""))
        self.error_type = error_type
        self.error = error


def _refuse_errors(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """A response hook: prometheus-api-client only keeps the repr of a non-200 body."""
    if response.status_code == 200 or response.is_redirect:
        return
    detail = response.text.strip()[:300]
    error_type = error = ""
    try:
        body = response.json()
        error_type, error = str(body.get("errorType", "")), str(body["error"])
        detail = f"{error_type}: {error}".lstrip(": ")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    raise _Answered(response.status_code, detail, error_type, error)


def _query(url: str, query: str, timeout: float) -> Any:
    """One blocking instant query, bounded by `timeout` on the socket and on the server."""
    session = requests.Session()
    session.hooks["response"].append(_refuse_errors)
    with PrometheusConnect(url, disable_ssl=False, retry=_NO_RETRY, session=session) as prometheus:
        # `timeout` in params stops the query's evaluation in Prometheus; the keyword one is
        # requests' connect/read timeout, so the thread ends too when Prometheus hangs.
        return prometheus.custom_query(query, params={"timeout": f"{timeout:g}"}, timeout=timeout)


def _root_cause(error: BaseException) -> str:
    """`Connection refused` rather than requests' three nested reprs of it."""
    for _ in range(5):
        inner = getattr(error, "reason", None) or (error.args[0] if error.args else None)
        if not isinstance(inner, BaseException):
            break
        error = inner
    message = re.sub(r"^\w+\(host=.*?\): ", "", str(error))
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _number(sample: Any) -> float | None:
    """A sample's value; NaN and ±Inf (0/0, no requests in the window) are no data."""
    value = float(sample[1])
    return value if math.isfinite(value) else None


def _value(result: Any) -> float | None:
    """The single number in an instant query's result; ValueError when there is no single one.

    The client returns `data.result` without `resultType`: a scalar is `[time, "v"]`, a vector
    a list of `{"metric", "value"}`, a range vector a list of `{"metric", "values"}`.
    """
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        return _number(result)
    if not isinstance(result, list):
        raise ValueError(f"unexpected result {result!r:.100}")
    if not result:
        return None
    if "value" not in result[0]:
        raise ValueError("query returned a range vector; use an instant query (e.g. rate(x[1m]))")
    if len(result) > 1:
        raise ValueError(f"query returned {len(result)} series; aggregate it to one (e.g. sum(...))")
    return _number(result[0]["value"])


async def _measure_one(url: str, query: MetricQuery, timeout: float) -> MetricValue:
    def failed(cause: str) -> MetricValue:
        return MetricValue(name=query.name, query=query.query, error=f"{query.name}: {url} {cause}")

    try:
        result = await asyncio.wait_for(asyncio.to_thread(_query, url, query.query, timeout), timeout)
    except (TimeoutError, requests.Timeout):
        return failed(f"did not answer within {timeout:g}s")
    except _Answered as error:
        return failed(str(error))
    except (requests.JSONDecodeError, KeyError, TypeError) as error:  # 200, but not Prometheus'
        return failed(f"answered 200 with no query result: {type(error).__name__}: {error}")
    except requests.RequestException as error:
        return failed(f"unreachable: {_root_cause(error)}")
    try:
        value = _value(result)
    except (ValueError, KeyError, TypeError, IndexError) as error:
        return MetricValue(name=query.name, query=query.query, error=f"{query.name}: {error}")
    return MetricValue(name=query.name, query=query.query, value=value)


@activity.defn(name="measure")
async def measure(request: MeasureRequest) -> list[MetricValue]:
    """Run every query at once, each within `request.timeout`, so the whole call is that long.

    Short and bounded, so it needs no heartbeat. `value` None means no data (inconclusive);
    `error` names the check, the endpoint and the cause.
    """
    url = request.prometheus_url.rstrip("/")
    timeout = request.timeout.total_seconds()
    return list(await asyncio.gather(*(_measure_one(url, query, timeout) for query in request.queries)))


class PrometheusUnavailable(Exception):
    """Prometheus could not say whether a query is valid: unreachable, too slow, or not Prometheus."""


def _parse_verdict(url: str, query: str, timeout: float) -> tuple[bool | None, str]:
    """(True, "") accepted, (False, Prometheus' error) refused, (None, why) it could not tell."""
    try:
        _query(url, query, timeout)
    except _Answered as error:
        if error.error_type == "bad_data":
            return False, error.error.removeprefix('invalid parameter "query": ')
        if error.error_type:  # parsed, then failed to evaluate: the analysis' business, not the spec's
            return True, ""
        return None, str(error)
    except requests.Timeout:
        return None, f"did not answer within {timeout:g}s"
    except (requests.JSONDecodeError, KeyError, TypeError) as error:  # 200, but not Prometheus'
        return None, f"answered 200 with no query result: {type(error).__name__}: {error}"
    except requests.RequestException as error:
        return None, f"unreachable: {_root_cause(error)}"
    return True, ""


def rejected_query(url: str, query: str, timeout: float = 3.0) -> str | None:
    """Prometheus' reason for refusing `query` (a parse error), or None when it accepts it.

    Asked as an instant query, which every Prometheus answers (`/api/v1/parse_query` is newer
    than 2.42): a query that parses but cannot be evaluated is accepted, since the analysis
    judges that. Bounded by `timeout` even when a name resolves slowly (a daemon thread asks);
    PrometheusUnavailable when it cannot tell.
    """
    verdicts: list[tuple[bool | None, str]] = []
    asker = threading.Thread(target=lambda: verdicts.append(_parse_verdict(url, query, timeout)), daemon=True)
    asker.start()
    asker.join(timeout + 0.5)
    if not verdicts:
        raise PrometheusUnavailable(f"did not answer within {timeout:g}s")
    accepted, why = verdicts[0]
    if accepted is None:
        raise PrometheusUnavailable(why)
    return None if accepted else why
