"""What a run's Temporal history says: its size, and when each activity, timer and workflow task ran.

Times are the server's event times (epoch seconds). An activity's `started` is when a worker
picked it up, so `started - scheduled` is its schedule-to-start latency; a timer's `due` is its
start plus its timeout, so `fired - due` is how late the server fired it.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.client import WorkflowHandle


@dataclass
class ActivityRun:
    name: str
    scheduled: float
    started: float | None = None
    closed: float | None = None
    outcome: str = ""
    attempts: int = 1
    queries: int = 0  # `measure`: PromQL queries per attempt (from its input)


@dataclass
class TimerRun:
    timer_id: str
    started: float
    timeout: float
    fired: float | None = None

    @property
    def due(self) -> float:
        return self.started + self.timeout


@dataclass
class WorkflowTaskRun:
    scheduled: float
    started: float | None = None
    completed: float | None = None


@dataclass
class Timeline:
    events: int
    bytes: int
    activities: list[ActivityRun] = field(default_factory=list)
    timers: list[TimerRun] = field(default_factory=list)
    workflow_tasks: list[WorkflowTaskRun] = field(default_factory=list)
    first: float = 0.0
    last: float = 0.0
    sizes: list[int] = field(default_factory=list)  # serialized bytes of each event
    measure_events: list[int] = field(default_factory=list)  # indexes of the `measure` activities' scheduled events

    def per_measurement(self) -> tuple[float, float] | None:
        """(events, bytes) from one measurement's scheduling to the next one's, median over the run."""
        pairs = list(zip(self.measure_events, self.measure_events[1:]))
        if not pairs:
            return None
        events = statistics.median(b - a for a, b in pairs)
        size = statistics.median(sum(self.sizes[a:b]) for a, b in pairs)
        return float(events), float(size)

    def prometheus_queries(self) -> int:
        """Queries the `measure` activities sent: their inputs' queries, times their attempts."""
        return sum(run.queries * run.attempts for run in self.activities)

    def activity_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.activities:
            counts[run.name] = counts.get(run.name, 0) + 1
        return counts


def _time(event: HistoryEvent) -> float:
    return event.event_time.ToNanoseconds() / 1e9


_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: ("activity_task_completed_event_attributes", "completed"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: ("activity_task_failed_event_attributes", "failed"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: ("activity_task_timed_out_event_attributes", "timedOut"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: ("activity_task_canceled_event_attributes", "canceled"),
}


def _queries(event: HistoryEvent) -> int:
    """How many queries a `measure` activity's input (a MeasureRequest, JSON) holds."""
    payloads = event.activity_task_scheduled_event_attributes.input.payloads
    try:
        return len(json.loads(payloads[0].data).get("queries") or [])
    except (IndexError, ValueError, AttributeError):
        return 0


def timeline(events: list[HistoryEvent]) -> Timeline:
    result = Timeline(events=len(events), bytes=History(events=events).ByteSize())
    if events:
        result.first, result.last = _time(events[0]), _time(events[-1])
    activities: dict[int, ActivityRun] = {}
    timers: dict[str, TimerRun] = {}
    tasks: dict[int, WorkflowTaskRun] = {}
    for index, event in enumerate(events):
        kind, at = event.event_type, _time(event)
        result.sizes.append(event.ByteSize())
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            run = ActivityRun(event.activity_task_scheduled_event_attributes.activity_type.name, at)
            if run.name == "measure":
                result.measure_events.append(index)
                run.queries = _queries(event)
            activities[event.event_id] = run
            result.activities.append(run)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            found = activities.get(event.activity_task_started_event_attributes.scheduled_event_id)
            if found is not None:
                found.started = at
                found.attempts = max(1, event.activity_task_started_event_attributes.attempt)
        elif kind in _CLOSED:
            attributes, outcome = _CLOSED[kind]
            found = activities.get(getattr(event, attributes).scheduled_event_id)
            if found is not None:
                found.closed, found.outcome = at, outcome
        elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
            attrs = event.timer_started_event_attributes
            timer = TimerRun(attrs.timer_id, at, attrs.start_to_fire_timeout.ToNanoseconds() / 1e9)
            timers[attrs.timer_id] = timer
            result.timers.append(timer)
        elif kind == EventType.EVENT_TYPE_TIMER_FIRED:
            found_timer = timers.get(event.timer_fired_event_attributes.timer_id)
            if found_timer is not None:
                found_timer.fired = at
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            task = WorkflowTaskRun(at)
            tasks[event.event_id] = task
            result.workflow_tasks.append(task)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            found_task = tasks.get(event.workflow_task_started_event_attributes.scheduled_event_id)
            if found_task is not None:
                found_task.started = at
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            found_task = tasks.get(event.workflow_task_completed_event_attributes.scheduled_event_id)
            if found_task is not None:
                found_task.completed = at
    return result


async def fetch_timeline(handle: WorkflowHandle[Any, Any]) -> Timeline:
    history = await handle.fetch_history()
    return timeline(list(history.events))


def measurement_lateness(line: Timeline, since: float = 0.0, until: float = float("inf")) -> list[float]:
    """For each analysis measurement whose timer fell due in [since, until): how long after the due
    time the `measure` activity started (timer firing + workflow task + schedule-to-start)."""
    late = []
    measures = [a for a in line.activities if a.name == "measure" and a.started is not None]
    for timer in line.timers:
        if timer.fired is None or not since <= timer.due < until:
            continue
        following = next((a for a in measures if a.scheduled >= timer.fired), None)
        if following is not None and following.started is not None:
            late.append(following.started - timer.due)
    return late
