"""Names and numbers every component of kubequant agrees on (see docs/api.md)."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final

GROUP: Final = "kubequant.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "ModelOptimization"
PLURAL: Final = "modeloptimizations"
SINGULAR: Final = "modeloptimization"
SHORT_NAMES: Final = ("mopt",)
CATEGORIES: Final = ("kubequant",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Children carry this label (and never the parent's labels).
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "kubequant"
OWNER_NAME_LABEL: Final = "kubequant.io/owner-name"
OWNER_UID_LABEL: Final = "kubequant.io/owner-uid"
GENERATION_LABEL: Final = "kubequant.io/generation"
KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"

# The environment the operator gives the engine's pod is in kubequant_api.jobenv.

# Spec field paths that error messages name (InvalidSpecError.field).
MODEL_FIELD: Final = "spec.model.uri"
TASK_FIELD: Final = "spec.model.task"
OUTPUT_FIELD: Final = "spec.output.uri"

# The termination message is capped by the kubelet at 4 KiB.
TERMINATION_MESSAGE_MAX_BYTES: Final = 4096
RESULTS_FILE: Final = "results.json"
MODEL_CARD_FILE: Final = "README.md"
ARTIFACT_META_FILE: Final = "kubequant-artifact.json"
COMPLETE_MARKER: Final = "_KUBEQUANT_COMPLETE"
MAX_CANDIDATES: Final = 16


class ExitCode(IntEnum):
    """Exit codes of the engine; the operator's podFailurePolicy acts on them."""

    SUCCESS = 0
    RETRYABLE = 1
    INVALID_SPEC = 2
    QUALITY_GATE_FAILED = 3


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConditionType(StrEnum):
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    SUSPENDED = "Suspended"


class Reason(StrEnum):
    """Condition reasons (the Stalled ones are STALLED_REASONS, listed in docs/api.md)."""

    SUCCEEDED = "Succeeded"
    PROGRESSING = "Progressing"
    JOB_CREATED = "JobCreated"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    QUEUED = "Queued"
    NOT_SUSPENDED = "NotSuspended"
    DRY_RUN_SUCCEEDED = "DryRunSucceeded"
    INVALID_SPEC = "InvalidSpec"
    CREDENTIALS_MISSING = "CredentialsMissing"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    OOM_KILLED = "OOMKilled"
    QUALITY_GATE_FAILED = "QualityGateFailed"
    RESULTS_UNAVAILABLE = "ResultsUnavailable"
    ENGINE_FAILED = "EngineFailed"
    FORBIDDEN = "Forbidden"
    INVALID_JOB_SPEC = "InvalidJobSpec"
    INVALID_CHILD_SPEC = "InvalidChildSpec"
    # The Job controller cannot create the engine's pod (its FailedCreate events): the
    # PriorityClass named by spec.resources.priorityClassName does not exist, a ResourceQuota
    # is exhausted, Pod Security admission refuses the pod, or another refusal.
    PRIORITY_CLASS_NOT_FOUND = "PriorityClassNotFound"
    QUOTA_EXCEEDED = "QuotaExceeded"
    POD_SECURITY_VIOLATION = "PodSecurityViolation"
    POD_CREATE_FORBIDDEN = "PodCreateForbidden"
    # A child with the per-run name exists but is not controlled by this object: it is never
    # adopted and nothing is read from it.
    CHILD_CONFLICT = "ChildConflict"
    # The operator's policy settings refuse what the spec asks of the cluster.
    IMAGE_NOT_ALLOWED = "ImageNotAllowed"
    PRIORITY_CLASS_NOT_ALLOWED = "PriorityClassNotAllowed"
    PLACEMENT_NOT_ALLOWED = "PlacementNotAllowed"


STALLED_REASONS: Final = (
    Reason.INVALID_SPEC,
    Reason.CREDENTIALS_MISSING,
    Reason.UNSCHEDULABLE,
    Reason.IMAGE_PULL_BACK_OFF,
    Reason.DEADLINE_EXCEEDED,
    Reason.OOM_KILLED,
    Reason.QUALITY_GATE_FAILED,
    Reason.RESULTS_UNAVAILABLE,
    Reason.ENGINE_FAILED,
    Reason.FORBIDDEN,
    Reason.INVALID_JOB_SPEC,
    Reason.INVALID_CHILD_SPEC,
    Reason.PRIORITY_CLASS_NOT_FOUND,
    Reason.QUOTA_EXCEEDED,
    Reason.POD_SECURITY_VIOLATION,
    Reason.POD_CREATE_FORBIDDEN,
    Reason.CHILD_CONFLICT,
    Reason.IMAGE_NOT_ALLOWED,
    Reason.PRIORITY_CLASS_NOT_ALLOWED,
    Reason.PLACEMENT_NOT_ALLOWED,
)


class Stage(StrEnum):
    PENDING = "Pending"
    LOADING = "Loading"
    CALIBRATING = "Calibrating"
    QUANTIZING = "Quantizing"
    EVALUATING = "Evaluating"
    SAVING = "Saving"
    DONE = "Done"


class Task(StrEnum):
    AUTO = "auto"
    CAUSAL_LM = "causal-lm"
    FEATURE_EXTRACTION = "feature-extraction"
    SEQUENCE_CLASSIFICATION = "sequence-classification"


class GateVerdict(StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    NOT_REQUESTED = "NotRequested"


URI_SCHEMES: Final = ("hf", "s3", "gs", "pvc", "file")
OUTPUT_URI_SCHEMES: Final = ("s3", "gs", "pvc", "file")
