"""The Job's environment contract: every variable the operator sets on the engine's pod.

The operator writes these (``kubequant_operator.builders``) and the engine reads them
(``optimizer_job.settings``); both sides use the names below and never spell them out.
"""

from __future__ import annotations

from typing import Final

# The object the Job runs for: the engine finds it (and only it) with these.
ENV_OBJECT_NAMESPACE: Final = "KUBEQUANT_OBJECT_NAMESPACE"
ENV_OBJECT_NAME: Final = "KUBEQUANT_OBJECT_NAME"
ENV_OBJECT_UID: Final = "KUBEQUANT_OBJECT_UID"
ENV_OBJECT_GENERATION: Final = "KUBEQUANT_OBJECT_GENERATION"
OBJECT_IDENTITY_ENV: Final = (
    ENV_OBJECT_NAMESPACE,
    ENV_OBJECT_NAME,
    ENV_OBJECT_UID,
    ENV_OBJECT_GENERATION,
)

# Where the engine works and reports, and what it exposes.
ENV_WORK_DIR: Final = "KUBEQUANT_WORK_DIR"
ENV_PVC_MOUNT_ROOT: Final = "KUBEQUANT_PVC_MOUNT_ROOT"
ENV_TERMINATION_LOG: Final = "KUBEQUANT_TERMINATION_LOG"
ENV_ENGINE_METRICS_PORT: Final = "KUBEQUANT_ENGINE_METRICS_PORT"
ENV_PUSHGATEWAY_URL: Final = "KUBEQUANT_PUSHGATEWAY_URL"

# Standard variables the operator sets for the libraries the engine runs (tempfile, the
# Hugging Face hub cache); the engine derives its default cache directory from HF_HOME.
ENV_TMPDIR: Final = "TMPDIR"
ENV_HOME: Final = "HOME"
ENV_HF_HOME: Final = "HF_HOME"
# Read by the engine (before HF_HOME) but never set by the operator.
ENV_HF_HUB_CACHE: Final = "HF_HUB_CACHE"

JOB_ENV: Final = (
    *OBJECT_IDENTITY_ENV,
    ENV_WORK_DIR,
    ENV_TMPDIR,
    ENV_HOME,
    ENV_HF_HOME,
    ENV_PVC_MOUNT_ROOT,
    ENV_TERMINATION_LOG,
    ENV_ENGINE_METRICS_PORT,
    ENV_PUSHGATEWAY_URL,
)
"""Every variable the operator may set on the engine container (the pushgateway URL only
when one is configured)."""

# Where a source's files land: s3:// and gs:// are downloaded into the work directory (an
# emptyDir), hf:// into the hub cache (HF_HOME: the spec's cache claim, else an emptyDir);
# file:// and pvc:// are read in place. What lands on an emptyDir takes the pod's ephemeral
# storage, which the operator requests from a dry run's estimate.
_DOWNLOADED_TO_WORK_DIR: Final = ("s3", "gs")


def source_on_ephemeral_storage(uri: str, cache_pvc: str | None) -> bool:
    """Whether a run's download of ``uri`` takes the pod's ephemeral storage."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme == "hf":
        return not cache_pvc
    return scheme in _DOWNLOADED_TO_WORK_DIR
