"""Pure status computation: (object, its Job, the Job's pods, settings, now) -> status.

Nothing here does I/O. :func:`classify` reads the observation as ONE :class:`State` (phase,
reason, message, whether work is under way, suspended or stalled, and the run's facts);
:func:`conditions_for` derives the four kstatus conditions from that state, and
:func:`transition_events` the events from the change between the old and the new status.
Reading Jobs and Pods lives in :mod:`.children`, why a run cannot progress in :mod:`.failures`,
harvesting results in :mod:`.harvest`.

The operator owns ``phase``, ``conditions``, ``observedGeneration``, ``run``, ``jobName``,
``attempts``, the times, ``message``, ``failure``, ``rerun``, ``lastSuccessful`` and
``history``; it writes ``result`` only when it harvests one the engine could not write (from
the termination message or ``results.json``), and clears ``result`` and ``progress`` in the
patch that records a new run (a new generation, or a rerun: :func:`decide_rerun`).
Conditions follow kstatus: ``Ready`` is True only when the run of the current generation is
done, ``Reconciling`` is True while work is under way, ``Stalled`` is True with a reason when
the object cannot progress without a change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kubequant_api.constants import ConditionType, GateVerdict, Phase, Reason
from kubequant_api.models import ModelOptimizationSpec, Result
from kubequant_api.status import CONDITION_MESSAGE_MAX, RERUN_ANNOTATION
from kubequant_operator.builders import generation_of_child
from kubequant_operator.children import (
    attempts,
    job_condition,
    job_finished,
    job_name,
    job_record,
    job_suspended,
    pod_running,
)
from kubequant_operator.failures import (
    ChildRefusal,
    FailureInfo,
    classify_failed_job,
    oom_failing_job,
    pod_blocked,
    pod_create_refused,
    refusal_failure,
)
from kubequant_operator.harvest import clip, result_for_generation
from kubequant_operator.settings import Settings

OPERATOR_FIELDS = (
    "phase",
    "observedGeneration",
    "conditions",
    "jobName",
    "job",
    "attempts",
    "startTime",
    "completionTime",
    "message",
    "failure",
    "run",
    "rerun",
    "lastSuccessful",
    "preflight",
    "history",
)
# Events of the rerun annotation (kubequant.io/rerun).
RERUN_STARTED = "RerunStarted"
RERUN_QUEUED = "RerunQueued"
RERUN_REFUSED = "RerunRefused"


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True)
class Blocker:
    """Why no Job runs for this generation (invalid spec, missing PVC)."""

    reason: Reason
    message: str
    terminal: bool  # True: only a spec change helps (phase Failed); False: phase Pending


@dataclass(frozen=True)
class Observation:
    obj: Mapping[str, Any]
    spec: ModelOptimizationSpec | None
    job: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    blocker: Blocker | None = None
    refusal: ChildRefusal | None = None  # the API server refused to create a child (403, 422)
    harvested: Result | None = None
    harvest_note: str = ""  # why nothing could be harvested (for ResultsUnavailable)
    # The Job's FailedCreate events, read only while the Job has no live pod.
    pod_create_events: Sequence[Mapping[str, Any]] = ()
    rerun: RerunDecision | None = None  # what the rerun annotation asks (decide_rerun)


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class StatusUpdate:
    status: dict[str, Any]  # the operator-owned fields, full (None = remove)
    patch: dict[str, Any] | None  # merge patch of .status, None when nothing changed
    events: list[EventSpec] = field(default_factory=list)

    @property
    def phase(self) -> str | None:
        value = self.status.get("phase")
        return str(value) if value is not None else None


@dataclass(frozen=True)
class State:
    """What one observation means for the object's current generation.

    ``failure`` is set exactly when the object is stalled (it cannot progress without a
    change); ``reconciling`` while work is under way; ``suspended`` while no Job may run.
    """

    phase: Phase
    reason: Reason
    message: str
    reconciling: bool = False
    suspended: bool = False
    failure: FailureInfo | None = None
    job_name: str | None = None
    attempts: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    result: dict[str, Any] | None = None  # a harvested result to write into status.result

    @property
    def stalled(self) -> bool:
        return self.failure is not None


def _stalled(
    phase: Phase, failure: FailureInfo, message: str, completion_time: str | None = None
) -> State:
    """A state only a change can end: Stalled with the failure's reason."""
    return State(phase, failure.reason, message, failure=failure, completion_time=completion_time)


# --------------------------------------------------------------------------- classification
# (the failure classifiers are in :mod:`.failures`)


def generation_of(obj: Mapping[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 1)


def classify(obs: Observation, s: Settings, now: datetime) -> State:
    """The one state the observation is in."""
    spec = obs.spec
    if obs.blocker is not None:
        b = obs.blocker
        phase = Phase.FAILED if b.terminal else Phase.PENDING
        return _stalled(phase, FailureInfo(b.reason, b.message), b.message)
    if spec is not None and spec.suspend:
        message = "suspended by spec.suspend: no Job runs"
        return State(Phase.PENDING, Reason.SUSPENDED, message, suspended=True)
    if obs.job is None and obs.refusal is not None:
        # Not terminal: the cause (RBAC, admission, a validation rule) may go away; the
        # create is retried with backoff and the next success ends the stall.
        failure = refusal_failure(obs.refusal)
        return _stalled(Phase.PENDING, failure, f"{failure.reason}: {failure.message}")
    if obs.job is None:
        return State(
            Phase.PENDING, Reason.PROGRESSING, "creating the engine's Job", reconciling=True
        )

    job = obs.job
    generation = generation_of(obs.obj)
    pods = [p for p in obs.pods if generation_of_child(p) in (None, generation)]
    run = obs.rerun.run if obs.rerun is not None else current_run(obs.obj)
    restarted = rerun_started(obs.obj, run)
    existing = None if restarted else result_for_generation(obs.obj, generation)
    harvested: dict[str, Any] | None = None
    if existing is None and obs.harvested is not None and job_finished(job) is not None:
        harvested = existing = obs.harvested.to_api()
    return replace(
        _job_state(obs, job, pods, existing, s=s, now=now),
        job_name=job_name(job),
        attempts=attempts(job, pods),
        start_time=(job.get("status") or {}).get("startTime"),
        result=harvested,
    )


def _job_state(
    obs: Observation,
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    existing: Mapping[str, Any] | None,
    *,
    s: Settings,
    now: datetime,
) -> State:
    """The state while the current generation's Job exists."""
    spec = obs.spec
    job_status = job.get("status") or {}
    finished = job_finished(job)
    if finished == "Complete":
        done = job_status.get("completionTime") or rfc3339(now)
        if existing is not None:
            dry_run = bool(spec is not None and spec.dry_run)
            why = Reason.DRY_RUN_SUCCEEDED if dry_run else Reason.SUCCEEDED
            message = _success_message(existing, dry_run)
            return State(Phase.SUCCEEDED, why, message, completion_time=done)
        message = (
            "the engine finished but its results could not be read from "
            "status.result, the termination message or results.json"
        )
        if obs.harvest_note:
            message += f" ({obs.harvest_note})"
        failure = FailureInfo(Reason.RESULTS_UNAVAILABLE, message, 0)
        return _stalled(Phase.FAILED, failure, message, completion_time=done)
    if finished == "Failed":
        failed_cond = job_condition(job, "Failed") or {}
        done = (
            job_status.get("completionTime")
            or failed_cond.get("lastTransitionTime")
            or rfc3339(now)
        )
        failure = classify_failed_job(job, pods, spec, obs.obj.get("status"))
        if failure.reason == Reason.QUALITY_GATE_FAILED and existing is not None:
            failure = replace(failure, message=_gate_message(existing) or failure.message)
        message = f"{failure.reason}: {failure.message}"
        return _stalled(Phase.FAILED, failure, message, completion_time=done)
    if job_suspended(job):
        if spec is not None and spec.queue_name:
            message = f"waiting for admission by Kueue queue {spec.queue_name!r}"
            return State(Phase.PENDING, Reason.QUEUED, message, reconciling=True, suspended=True)
        message = "the Job is suspended"
        return State(Phase.PENDING, Reason.SUSPENDED, message, reconciling=True, suspended=True)
    oom = oom_failing_job(job, pods, spec, obs.obj.get("status"))
    if oom is not None:
        # The Job's podFailurePolicy fails it on this pod: told now, not at the Job's failure.
        failure, when = oom
        message = f"{failure.reason}: {failure.message}"
        return _stalled(Phase.FAILED, failure, message, completion_time=when or rfc3339(now))
    refused = pod_create_refused(job, pods, obs.pod_create_events)
    if refused is not None:
        # Not terminal: the Job controller keeps retrying, and the first pod it can create
        # ends the stall (creating the PriorityClass, raising the quota...).
        return _stalled(Phase.PENDING, refused, f"{refused.reason}: {refused.message}")
    blocked = pod_blocked(pods, s, now, spec)
    if blocked is not None:
        return _stalled(Phase.PENDING, blocked, f"{blocked.reason}: {blocked.message}")
    name = job_name(job)
    if pod_running(pods):
        message = f"the engine is running (Job {name}, attempt {max(attempts(job, pods), 1)})"
        return State(Phase.RUNNING, Reason.RUNNING, message, reconciling=True)
    message = f"Job {name} created, waiting for its pod"
    return State(Phase.PENDING, Reason.JOB_CREATED, message, reconciling=True)


def _success_message(result: Mapping[str, Any], dry_run: bool) -> str:
    if dry_run:
        return "dry run done: the plan is in status.result.plan"
    parts = [f"{result.get('method') or 'optimized'}"]
    ratio = result.get("compressionRatio")
    if ratio is not None:
        parts.append(f"compression {float(ratio):.2f}x")
    verdict = result.get("qualityGate")
    if verdict:
        parts.append(f"quality gate {verdict}")
    uri = result.get("outputUri")
    if uri:
        parts.append(f"written to {uri}")
    return ", ".join(parts)


def _gate_message(result: Mapping[str, Any]) -> str:
    parts = []
    for key in ("perplexityIncreasePercent", "cosineSimilarity", "top1Agreement"):
        if result.get(key) is not None:
            parts.append(f"{key}={result[key]}")
    if result.get("qualityGate") == GateVerdict.FAILED and parts:
        return "quality gate failed: " + ", ".join(parts)
    return ""


def is_terminal_for_generation(obj: Mapping[str, Any]) -> bool:
    """The current generation already ended (Succeeded or Failed): never start it again."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    return status.get("observedGeneration") == generation and status.get("phase") in (
        Phase.SUCCEEDED,
        Phase.FAILED,
    )


# --------------------------------------------------------------------------- conditions


def _cond(ctype: ConditionType, status: bool, reason: str, message: str) -> dict[str, Any]:
    """One condition as metav1.Condition validates it: a CamelCase reason, a bounded
    message (lastTransitionTime and observedGeneration are added by merge_conditions)."""
    return {
        "type": str(ctype),
        "status": "True" if status else "False",
        "reason": str(reason),
        "message": clip(message, CONDITION_MESSAGE_MAX) if message else "",
    }


def conditions_for(state: State) -> list[dict[str, Any]]:
    """The four kstatus conditions of a state: the one place they are written.

    Every condition carries the state's reason; a condition that is True also carries its
    message (Ready always does). Suspended says NotSuspended while it is False.
    """
    reason, message = state.reason, state.message

    def told(on: bool) -> str:
        return message if on else ""

    return [
        _cond(ConditionType.READY, state.phase == Phase.SUCCEEDED, reason, message),
        _cond(ConditionType.RECONCILING, state.reconciling, reason, told(state.reconciling)),
        _cond(ConditionType.STALLED, state.stalled, reason, told(state.stalled)),
        _cond(
            ConditionType.SUSPENDED,
            state.suspended,
            reason if state.suspended else Reason.NOT_SUSPENDED,
            told(state.suspended),
        ),
    ]


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[dict[str, Any]], generation: int, now: str
) -> list[dict[str, Any]]:
    """New conditions, keeping lastTransitionTime where a condition's status is unchanged."""
    by_type = {c.get("type"): c for c in old}
    merged: list[dict[str, Any]] = []
    for cond in new:
        prev = by_type.get(cond["type"])
        ltt = now
        if prev is not None and prev.get("status") == cond["status"]:
            ltt = str(prev.get("lastTransitionTime") or now)
        merged.append({**cond, "lastTransitionTime": ltt, "observedGeneration": generation})
    known = {c["type"] for c in merged}
    merged.extend(dict(c) for c in old if c.get("type") not in known)
    return merged


# --------------------------------------------------------------------------- runs


def current_run(obj: Mapping[str, Any]) -> int:
    """The run of the current generation the status records (1 until a rerun starts)."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != generation_of(obj):
        return 1
    run = status.get("run")
    return int(run) if isinstance(run, int) and run >= 1 else 1


def rerun_started(obj: Mapping[str, Any], run: int) -> bool:
    """Whether ``run`` is a rerun of the generation the status describes, not yet recorded:
    the previous run's result and progress (of the same generation) must go, in the patch
    that records it. (A new generation's are told apart by their ``generation``.)"""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != generation_of(obj):
        return False
    return (status.get("run") or 1) != run


def _rerun_value(obj: Mapping[str, Any]) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(RERUN_ANNOTATION)
    return str(value) if value else None


@dataclass(frozen=True)
class RerunDecision:
    """What the ``kubequant.io/rerun`` annotation asks of this reconcile.

    ``run`` is the run of the current generation to converge on; ``start`` says it is a new
    one to create now; ``record`` is the new ``status.rerun`` (None: unchanged).
    """

    run: int
    start: bool = False
    record: dict[str, Any] | None = None
    event: EventSpec | None = None


def decide_rerun(obj: Mapping[str, Any], spec_valid: bool) -> RerunDecision:
    """Level-based: a value of the annotation differing from ``status.rerun.requested``
    starts one more run of the current generation once the current run has ended; while a
    run is active it is queued (``status.rerun.queued``) and starts when that run ends. A
    new generation's first run covers it; an invalid spec refuses it (only a spec change
    helps). The same value never triggers twice."""
    run = current_run(obj)
    value = _rerun_value(obj)
    status = obj.get("status") or {}
    record = dict(status.get("rerun") or {})
    if value is None or value == record.get("requested"):
        return RerunDecision(run)
    generation = generation_of(obj)
    if status.get("observedGeneration") != generation:
        # A new generation: its first run is the run asked for.
        return RerunDecision(run, record={"requested": value, "run": run})
    if not spec_valid:
        message = (
            f"rerun {value!r} refused: generation {generation} has an invalid spec; "
            "a spec change starts a new run"
        )
        return RerunDecision(
            run,
            record={"requested": value, "run": run},
            event=EventSpec("Warning", RERUN_REFUSED, message),
        )
    if is_terminal_for_generation(obj):
        following = run + 1
        message = (
            f"rerun {value!r}: starting run {following} of generation {generation} "
            f"(run {run} ended {status.get('phase')})"
        )
        return RerunDecision(
            following,
            start=True,
            record={"requested": value, "run": following},
            event=EventSpec("Normal", RERUN_STARTED, message),
        )
    if record.get("queued") == value:
        return RerunDecision(run)
    message = (
        f"rerun {value!r} queued: run {run} of generation {generation} has not ended; "
        "the rerun starts when it does"
    )
    queued = {**record, "run": int(record.get("run") or run), "queued": value}
    return RerunDecision(run, record=queued, event=EventSpec("Normal", RERUN_QUEUED, message))


def rerun_wanted(obj: Mapping[str, Any]) -> bool:
    """Whether a watch event of the object needs a reconcile for its rerun annotation: a new
    value not yet handled (or a queued one whose run has ended)."""
    value = _rerun_value(obj)
    record = (obj.get("status") or {}).get("rerun") or {}
    if value is None or value == record.get("requested"):
        return False
    return value != record.get("queued") or is_terminal_for_generation(obj)


# --------------------------------------------------------------------------- history

# The primary quality metric of a result: the one its gate bounds, else the first present.
_QUALITY_METRICS = (
    ("min_cosine_similarity", "cosineSimilarity"),
    ("max_perplexity_increase_percent", "perplexityIncreasePercent"),
    ("min_top1_agreement", "top1Agreement"),
)


def primary_quality(
    result: Mapping[str, Any], spec: ModelOptimizationSpec | None
) -> tuple[str, float] | None:
    """(metric, value) of the result's primary quality metric, if it has one."""
    gate = spec.evaluation.quality_gate if spec is not None else None
    order = [key for attr, key in _QUALITY_METRICS if getattr(gate, attr, None) is not None]
    order += [key for _, key in _QUALITY_METRICS if key not in order]
    for key in order:
        value = result.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return key, float(value)
    return None


def run_summary(
    result: Mapping[str, Any], *, generation: int, run: int, desired: Mapping[str, Any]
) -> dict[str, Any]:
    """``status.lastSuccessful`` for a run that succeeded with ``result``."""
    summary = {
        "generation": generation,
        "run": run,
        "jobName": desired.get("jobName"),
        "method": result.get("method"),
        "compressionRatio": result.get("compressionRatio"),
        "qualityGate": result.get("qualityGate"),
        "completionTime": desired.get("completionTime"),
        "outputUri": result.get("outputUri"),
        "outputDigest": result.get("outputDigest"),
    }
    return {k: v for k, v in summary.items() if v is not None}


def history_entry(
    state: State,
    result: Mapping[str, Any] | None,
    spec: ModelOptimizationSpec | None,
    *,
    generation: int,
    run: int,
) -> dict[str, Any]:
    """One ``status.history`` entry for a run that ended in ``state``."""
    res = result or {}
    quality = primary_quality(res, spec)
    entry = {
        "generation": generation,
        "run": run,
        "jobName": state.job_name,
        "method": res.get("method") or (str(spec.method) if spec is not None else None),
        "outcome": "Succeeded" if state.phase == Phase.SUCCEEDED else "Failed",
        "reason": str(state.reason),
        "compressionRatio": res.get("compressionRatio"),
        "qualityMetric": quality[0] if quality else None,
        "qualityValue": quality[1] if quality else None,
        "qualityGate": res.get("qualityGate"),
        "startTime": state.start_time,
        "completionTime": state.completion_time,
    }
    return {k: v for k, v in entry.items() if v is not None}


def updated_history(
    history: Sequence[Mapping[str, Any]], entry: Mapping[str, Any], limit: int
) -> list[dict[str, Any]]:
    """``entry`` first (replacing the entry of the same run), at most ``limit`` entries."""
    key = (entry.get("generation"), entry.get("run"))
    rest = [dict(h) for h in history if (h.get("generation"), h.get("run") or 1) != key]
    return [dict(entry), *rest][: max(limit, 0)]


def _replacement(old: Any, new: Any) -> Any:
    """A merge-patch value that turns ``old`` into ``new`` (keys ``new`` lacks set to null)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = {k: None for k in old if k not in new}
        out.update({k: _replacement(old.get(k), v) for k, v in new.items()})
        return out
    return new


# --------------------------------------------------------------------------- the computation


def compute_status(obs: Observation, s: Settings, now: datetime) -> StatusUpdate:
    """The operator-owned status for the object's current run, and the events."""
    generation = generation_of(obs.obj)
    old = dict(obs.obj.get("status") or {})
    decision = obs.rerun if obs.rerun is not None else RerunDecision(current_run(obs.obj))
    run = decision.run
    state = classify(obs, s, now)
    conditions = merge_conditions(
        old.get("conditions") or [], conditions_for(state), generation, rfc3339(now)
    )
    desired: dict[str, Any] = {
        "phase": str(state.phase),
        "observedGeneration": generation,
        "run": run,
        "conditions": conditions,
        "jobName": state.job_name,
        # The Job the operator created or adopted (name and uid), kept while none is trusted:
        # only that Job's pods are ever read (docs/security.md).
        "job": job_record(obs.job) if obs.job is not None else old.get("job"),
        "attempts": state.attempts,
        "startTime": state.start_time,
        "completionTime": state.completion_time,
        "message": clip(state.message),
        "failure": state.failure.to_api() if state.failure is not None else None,
        "rerun": decision.record if decision.record is not None else old.get("rerun"),
        "lastSuccessful": old.get("lastSuccessful"),
        "preflight": old.get("preflight"),
        "history": list(old.get("history") or []),
    }
    restarted = rerun_started(obs.obj, run)
    result = state.result
    if result is None and not restarted:
        result = result_for_generation(obs.obj, generation)
    ended = state.phase in (Phase.SUCCEEDED, Phase.FAILED) and state.job_name is not None
    plan = result.get("plan") if isinstance(result, Mapping) else None
    if isinstance(plan, Mapping) and plan.get("candidates"):
        desired["preflight"] = dict(plan)  # a dry run's plan outlives its generation
    if ended:
        if state.reason == Reason.SUCCEEDED and result is not None:
            desired["lastSuccessful"] = run_summary(
                result, generation=generation, run=run, desired=desired
            )
        entry = history_entry(state, result, obs.spec, generation=generation, run=run)
        desired["history"] = updated_history(desired["history"], entry, s.history_limit)
    patch: dict[str, Any] = {}
    for key in OPERATOR_FIELDS:
        if _normal(old.get(key)) != _normal(desired[key]):
            patch[key] = _replacement(old.get(key), desired[key])
    for key in ("result", "progress"):
        # A new run: the previous run's figures go in the patch that records this run.
        previous = old.get(key)
        if isinstance(previous, Mapping) and (
            restarted or previous.get("generation") != generation
        ):
            patch[key] = None
    if state.result is not None:
        patch["result"] = state.result
    events = transition_events(old, desired)
    if decision.event is not None:
        events.insert(0, decision.event)
    return StatusUpdate(status=desired, patch=patch or None, events=events)


def _normal(value: Any) -> Any:
    """Comparable form: empty containers and None are the same (merge patch drops both)."""
    if value in (None, "", [], {}):
        return None
    return value


# --------------------------------------------------------------------------- events


def _condition(conds: Sequence[Mapping[str, Any]], ctype: str) -> Mapping[str, Any]:
    return next((c for c in conds if c.get("type") == ctype), {})


def transition_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[EventSpec]:
    """Events for what changed: phase, Stalled (Warning) and Suspended transitions.

    Computed from the status before and after, so posting them needs no read of the API.
    """
    events: list[EventSpec] = []
    old_conds = old.get("conditions") or []
    new_conds = new.get("conditions") or []
    o_stalled, n_stalled = _condition(old_conds, "Stalled"), _condition(new_conds, "Stalled")
    stalled_now = n_stalled.get("status") == "True"
    stalled_changed = stalled_now and (
        o_stalled.get("status") != "True" or o_stalled.get("reason") != n_stalled.get("reason")
    )
    if stalled_changed:
        events.append(
            EventSpec("Warning", str(n_stalled.get("reason")), str(n_stalled.get("message")))
        )
    o_susp, n_susp = _condition(old_conds, "Suspended"), _condition(new_conds, "Suspended")
    if o_susp.get("status", "False") != n_susp.get("status"):
        events.append(
            EventSpec(
                "Normal",
                str(n_susp.get("reason")),
                str(n_susp.get("message") or "no longer suspended"),
            )
        )
    phase_changed = old.get("phase") != new.get("phase")
    generation_changed = old.get("observedGeneration") != new.get("observedGeneration")
    if (phase_changed or generation_changed) and not stalled_changed:
        ready = _condition(new_conds, "Ready")
        kind = "Warning" if new.get("phase") == Phase.FAILED else "Normal"
        events.append(
            EventSpec(kind, str(ready.get("reason") or new.get("phase")), str(new.get("message")))
        )
    return events
