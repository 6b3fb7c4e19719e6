"""A run's recorded history, read the way a fault test asserts on it: which activities ran (and
on which attempt they ended), which timers started and when they fired."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter


@dataclass(frozen=True)
class ActivityRun:
    """One scheduled activity: retries of it are attempts, not further entries."""

    name: str
    summary: str
    attempt: int  # the attempt that ended it (0 while none has)
    last_failure: Failure | None  # why the attempt before `attempt` ended
    completed: bool

    @property
    def retried_after_timeout(self) -> TimeoutType.ValueType | None:
        """The timeout that ended the previous attempt, if that is why it was retried."""
        if self.last_failure is None or not self.last_failure.HasField("timeout_failure_info"):
            return None
        return self.last_failure.timeout_failure_info.timeout_type


@dataclass(frozen=True)
class TimerRun:
    summary: str
    started: datetime
    due: datetime
    fired: list[datetime]  # once, or not yet


def _summary(event: Any) -> str:
    if not event.user_metadata.HasField("summary"):
        return ""
    return pydantic_data_converter.payload_converter.from_payload(event.user_metadata.summary, str)


async def activity_runs(handle: Any) -> list[ActivityRun]:
    """The run's activities in the order they were scheduled."""
    scheduled: dict[int, tuple[str, str]] = {}
    started: dict[int, tuple[int, Failure | None]] = {}
    completed: set[int] = set()
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = (attributes.activity_type.name, _summary(event))
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attributes = event.activity_task_started_event_attributes
            failure = attributes.last_failure if attributes.HasField("last_failure") else None
            started[attributes.scheduled_event_id] = (attributes.attempt, failure)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed.add(event.activity_task_completed_event_attributes.scheduled_event_id)
    return [
        ActivityRun(name, summary, *started.get(event_id, (0, None)), completed=event_id in completed)
        for event_id, (name, summary) in scheduled.items()
    ]


async def timer_runs(handle: Any) -> list[TimerRun]:
    """The run's durable timers in the order they started, with their due and fire times."""
    timers: dict[str, tuple[str, datetime, timedelta]] = {}
    fired: dict[str, list[datetime]] = {}
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            attributes = event.timer_started_event_attributes
            timeout = attributes.start_to_fire_timeout.ToTimedelta()
            timers[attributes.timer_id] = (_summary(event), event.event_time.ToDatetime(UTC), timeout)
        elif event.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            fired.setdefault(event.timer_fired_event_attributes.timer_id, []).append(event.event_time.ToDatetime(UTC))
    return [
        TimerRun(summary, started, started + timeout, fired.get(timer_id, []))
        for timer_id, (summary, started, timeout) in timers.items()
    ]
