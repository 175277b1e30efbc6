"""Engine settings: environment > config file (``KUBEQUANT_CONFIG_FILE``, YAML) > defaults.

Loaded by the shared loader of :mod:`kubequant_api.settings` (pydantic-settings). For the
engine, a variable or file value that is empty counts as unset, and a config file key that
names no setting is an error. The variables the operator sets on the Job's pod are named by
:mod:`kubequant_api.jobenv`. Every variable is listed in :data:`ENV_VARS` (name, field,
default, meaning) so that docs and ``.env.example`` follow from one place.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import AfterValidator, Field, field_validator

from kubequant_api.errors import InvalidSpecError
from kubequant_api.jobenv import (
    ENV_ENGINE_METRICS_PORT,
    ENV_HF_HOME,
    ENV_HF_HUB_CACHE,
    ENV_OBJECT_GENERATION,
    ENV_OBJECT_NAME,
    ENV_OBJECT_NAMESPACE,
    ENV_OBJECT_UID,
    ENV_PUSHGATEWAY_URL,
    ENV_PVC_MOUNT_ROOT,
    ENV_TERMINATION_LOG,
    ENV_WORK_DIR,
)
from kubequant_api.settings import (
    CONFIG_FILE_ENV,
    LOG_LEVELS,
    Env,
    KubequantSettings,
    port_number,
)

log = logging.getLogger(__name__)

__all__ = ["CONFIG_FILE_ENV", "ENV_VARS", "EngineSettings", "load_settings"]

DEVICES: Final = ("auto", "cpu", "cuda")
LOG_FORMATS: Final = ("auto", "json", "text")
DEFAULT_TERMINATION_LOG: Final = Path("/dev/termination-log")
DEFAULT_PUSH_TIMEOUT_S: Final = 10.0
DEFAULT_PROGRESS_INTERVAL_S: Final = 1.0


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    if env.get(ENV_HF_HUB_CACHE):
        return Path(env[ENV_HF_HUB_CACHE])
    if env.get(ENV_HF_HOME):
        return Path(env[ENV_HF_HOME]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _writable(path: Path) -> bool:
    if path.exists():
        return os.access(path, os.W_OK)
    return path.parent.is_dir() and os.access(path.parent, os.W_OK)


def _lenient_float(name: str, value: Any, default: float) -> float:
    """A number, or ``default`` (with a warning) when the value is not one."""
    raw = str(value).strip() if value is not None else ""
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default


class EngineSettings(KubequantSettings):
    """Engine configuration. Field ``x`` is read from ``KUBEQUANT_X`` unless noted."""

    empty_is_unset = True
    reject_unknown_file_keys = True

    work_dir: Annotated[Path, Env(ENV_WORK_DIR)] = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "kubequant-work",
        json_schema_extra={"documented_default": "$TMPDIR/kubequant-work"},
    )
    """scratch space for staging"""
    cache_dir: Path = Field(
        default_factory=lambda: _default_cache_dir(KubequantSettings.source_env()),
        json_schema_extra={
            "documented_default": "$HF_HUB_CACHE or $HF_HOME/hub or ~/.cache/huggingface/hub"
        },
    )
    """Hugging Face hub cache used for hf:// sources"""
    pvc_mount_root: Annotated[Path, Env(ENV_PVC_MOUNT_ROOT)] = Path("/mnt/kubequant/pvc")
    """where pvc://claim/path is mounted (claim/path below it)"""
    termination_log: Annotated[Path | None, Env(ENV_TERMINATION_LOG)] = Field(
        default=DEFAULT_TERMINATION_LOG, validate_default=True
    )
    """termination message file (ignored when not writable)"""
    metrics_port: Annotated[int, AfterValidator(port_number), Env(ENV_ENGINE_METRICS_PORT)] = 0
    """Prometheus port; 0 disables"""
    metrics_bind: Annotated[str | None, Env("KUBEQUANT_ENGINE_METRICS_BIND")] = Field(
        default=None,
        json_schema_extra={"documented_default": "0.0.0.0 in a cluster, else 127.0.0.1"},
    )
    """address the Prometheus port listens on"""
    pushgateway_url: Annotated[str | None, Env(ENV_PUSHGATEWAY_URL)] = None
    """Pushgateway for final metrics (may carry user:password@)"""
    pushgateway_timeout_seconds: float = DEFAULT_PUSH_TIMEOUT_S
    """timeout of the push to the Pushgateway (not a positive number: the default)"""
    status_progress_interval_seconds: float = DEFAULT_PROGRESS_INTERVAL_S
    """least time between two status.progress writes (not a number: the default)"""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING, ERROR"""
    log_format: str = "auto"
    """auto (text on a terminal, else JSON), json or text; --log-format overrides it"""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda"""
    bench_repeats: int = 10
    """timed forward passes per latency measurement (after 2 warm-ups)"""
    object_namespace: Annotated[str, Env(ENV_OBJECT_NAMESPACE)] = ""
    """namespace of the object the Job runs for (set by the operator)"""
    object_name: Annotated[str, Env(ENV_OBJECT_NAME)] = ""
    """name of the object the Job runs for (set by the operator)"""
    object_uid: Annotated[str, Env(ENV_OBJECT_UID)] = ""
    """uid of the object the Job runs for (set by the operator)"""
    object_generation: Annotated[str, Env(ENV_OBJECT_GENERATION)] = ""
    """generation of the object the Job runs for (set by the operator)"""

    @classmethod
    def settings_error(cls, variable: str, message: str) -> InvalidSpecError:
        return InvalidSpecError(variable, message)

    @field_validator("termination_log")
    @classmethod
    def _writable_or_none(cls, value: Path | None) -> Path | None:
        return value if value is not None and _writable(value) else None

    @field_validator("pushgateway_timeout_seconds", mode="before")
    @classmethod
    def _push_timeout(cls, value: Any) -> float:
        number = _lenient_float(
            cls.env_name("pushgateway_timeout_seconds"), value, DEFAULT_PUSH_TIMEOUT_S
        )
        return number if number > 0 else DEFAULT_PUSH_TIMEOUT_S

    @field_validator("status_progress_interval_seconds", mode="before")
    @classmethod
    def _progress_interval(cls, value: Any) -> float:
        name = cls.env_name("status_progress_interval_seconds")
        return max(0.0, _lenient_float(name, value, DEFAULT_PROGRESS_INTERVAL_S))

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {LOG_LEVELS}")
        return value.upper()

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value.lower() not in LOG_FORMATS:
            raise ValueError(f"must be one of {LOG_FORMATS}, got {value!r}")
        return value.lower()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value.lower() not in DEVICES:
            raise ValueError(f"must be one of {DEVICES}, got {value!r}")
        return value.lower()

    @field_validator("bench_repeats")
    @classmethod
    def _repeats(cls, value: int) -> int:
        if not 1 <= value <= 1000:
            raise ValueError(f"must be between 1 and 1000, got {value}")
        return value

    def resolved_device(self) -> str:
        """``cpu`` or ``cuda``; ``auto`` picks cuda when torch sees a GPU."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


# (environment variable, settings field, default shown in docs, meaning)
ENV_VARS: Final[tuple[tuple[str, str, str, str], ...]] = (
    (
        CONFIG_FILE_ENV,
        "",
        "unset",
        "YAML file with any of the settings below (keys: field or variable names)",
    ),
    *EngineSettings.documented(),
)


def load_settings(env: Mapping[str, str] | None = None) -> EngineSettings:
    """Build the settings from ``env`` (default: ``os.environ``) and the optional config file."""
    return EngineSettings.from_environment(env)
