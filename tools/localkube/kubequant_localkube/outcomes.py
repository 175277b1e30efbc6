"""What a Job's pods do in the local control plane's scripted mode, and how a pod ended."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterator, MutableMapping

from kubequant_localkube.objects import Obj

TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one pod of a Job does in scripted mode.

    ``pending`` (e.g. "Unschedulable") keeps the pod Pending with that PodScheduled reason;
    ``waiting`` (e.g. "ImagePullBackOff", "CreateContainerConfigError") keeps its container
    waiting. Both stay until the pod is deleted (or the Job's deadline passes).
    ``disruption`` fails the pod with a DisruptionTarget condition (podFailurePolicy Ignore).
    ``run_process`` runs the container as a local process instead (process mode).
    """

    exit_code: int = 0
    message: str = ""
    reason: str | None = None
    duration: float = 0.05
    pending: str | None = None
    waiting: str | None = None
    waiting_message: str = ""
    disruption: bool = False
    logs: str = ""
    run_process: bool = False


SUCCEED = Outcome()
RUN_PROCESS = Outcome(run_process=True)

OutcomeSpec = Outcome | list[Outcome] | Callable[[Obj, int], Outcome]


class OutcomeTable(MutableMapping[str, OutcomeSpec]):
    """Scripted outcomes by Job name (``fnmatch`` patterns, also ``namespace/name``).

    A value is an Outcome, a list of Outcomes (one per attempt; the last repeats), or a
    callable ``(job, attempt) -> Outcome``. ``default`` applies when nothing matches.
    """

    def __init__(self, default: Outcome = SUCCEED) -> None:
        self._items: dict[str, OutcomeSpec] = {}
        self.default: OutcomeSpec = default
        self.resolver: Callable[[Obj, int], Outcome | None] | None = None

    def __getitem__(self, key: str) -> OutcomeSpec:
        return self._items[key]

    def __setitem__(self, key: str, value: OutcomeSpec) -> None:
        self._items[key] = value

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def resolve(self, job: Obj, attempt: int) -> Outcome:
        if self.resolver is not None:
            found = self.resolver(job, attempt)
            if found is not None:
                return found
        meta = job.get("metadata", {})
        name, ns = meta.get("name", ""), meta.get("namespace", "")
        spec: OutcomeSpec = self.default
        for pattern, value in self._items.items():
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(f"{ns}/{name}", pattern):
                spec = value
                break
        if callable(spec) and not isinstance(spec, Outcome):
            return spec(job, attempt)
        if isinstance(spec, list):
            return spec[min(attempt, len(spec) - 1)] if spec else SUCCEED
        return spec


@dataclasses.dataclass
class PodResult:
    exit_code: int
    reason: str
    message: str
    disruption: bool = False
    killed: bool = False


def log_tail(text: str) -> str:
    """The end of a container's log, as ``FallbackToLogsOnError`` takes it."""
    lines = text.splitlines()[-FALLBACK_LOG_LINES:]
    return "\n".join(lines)[-FALLBACK_LOG_BYTES:]
