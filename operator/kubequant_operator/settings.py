"""Every setting of the operator, in one place.

Precedence: environment variable > YAML config file (``KUBEQUANT_CONFIG_FILE``) > default.
The config file is a mapping whose keys are either the environment names
(``KUBEQUANT_ENGINE_IMAGE``) or the field names below (``engine_image``). The Helm chart sets
the environment names; keep them stable. The loader is the shared one of
:mod:`kubequant_api.settings` (pydantic-settings).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, field_validator

from kubequant_api.errors import KubequantError
from kubequant_api.settings import CONFIG_FILE_ENV, LOG_LEVELS, Env, KubequantSettings, port_number
from kubequant_api.status import HISTORY_MAX

__all__ = ["CONFIG_FILE_ENV", "DEFAULTS", "Settings", "SettingsError"]


class SettingsError(KubequantError):
    """A setting has a value the operator cannot use; the message names it."""


Port = Annotated[int, AfterValidator(port_number)]
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class Settings(KubequantSettings):
    """Operator configuration. Field ``x`` is read from ``KUBEQUANT_X``."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch (comma list); empty: all namespaces (cluster-wide)."""
    engine_image: str = "ghcr.io/kubequant/engine:0.1.0"
    """Engine image for Jobs whose spec.image is empty."""
    engine_image_pull_policy: str = "IfNotPresent"
    """imagePullPolicy of the engine container: Always, IfNotPresent or Never."""
    image_pull_secrets: tuple[str, ...] = ()
    """Names of Secrets (in the object's namespace) used to pull the engine image."""
    default_cpu: str = "2"
    """CPU request and limit when spec.resources.cpu is empty."""
    default_memory: str = "8Gi"
    """Memory request and limit when spec.resources.memory is empty."""
    gpu_resource_name: str = "nvidia.com/gpu"
    """GPU extended resource name when spec.resources.gpuResourceName is empty."""
    pending_deadline_seconds: int = 600
    """A pod unschedulable for longer than this makes the object Stalled=Unschedulable."""
    reconcile_interval_seconds: float = 60.0
    """Period of the level-based safety-net reconcile of every object."""
    metrics_port: Port = 8080
    """Port of the Prometheus /metrics endpoint (0: any free port)."""
    health_port: Port = 8081
    """Port of the liveness endpoint /healthz (0: any free port)."""
    bind_address: str = "0.0.0.0"  # noqa: S104 - a pod serves its probes on all interfaces
    """Address the metrics and liveness endpoints listen on."""
    log_level: str = "INFO"
    """Log level of the operator (DEBUG, INFO, WARNING, ERROR)."""
    engine_pushgateway_url: str = ""
    """Pushgateway the engine pushes its run metrics to (empty: none)."""
    engine_pushgateway_retention_seconds: float = 600.0
    """How long a harvested run's Pushgateway group stays after its push (so Prometheus scrapes
    it) before the operator deletes it; groups of deleted objects go at the next sweep."""
    engine_metrics_port: Port = 0
    """Port the engine serves its own metrics on (0: none)."""
    watch_server_timeout: int | None = 300
    """Watch requests: timeoutSeconds asked of the API server (kopf watching.server_timeout)."""
    watch_client_timeout: float | None = 330.0
    """Watch requests: client-side total timeout (kopf watching.client_timeout)."""
    watch_connect_timeout: float | None = 30.0
    """Watch requests: TCP connect timeout (kopf watching.connect_timeout)."""
    request_timeout_seconds: float = 30.0
    """Timeout of every non-watch API request the operator makes."""
    api_connections: int = 16
    """Concurrent HTTP connections of the operator's own API calls (kopf's watches aside)."""
    history_limit: int = 10
    """Finished runs kept in each object's status.history, newest first (0 to 100)."""
    kubeconfig: Annotated[str, Env("KUBECONFIG")] = ""
    """Kubeconfig file (standard KUBECONFIG variable); empty: in-cluster service account."""

    # ------------------------------------------------------------------ policy
    # What a user who may create a ModelOptimization may ask of the cluster (docs/security.md).
    allowed_images: tuple[str, ...] = ()
    """Images spec.image may name besides engine_image (comma list): an entry ending in '/',
    ':' or '@' is a prefix, any other must equal the image; '*' allows every image. Empty: only
    engine_image."""
    allowed_priority_classes: tuple[str, ...] = ("*",)
    """PriorityClasses spec.resources.priorityClassName may name (comma list); '*': any class
    except system-node-critical and system-cluster-critical, which must be listed by name.
    Empty: none."""
    allow_tolerate_all: bool = False
    """Allow a toleration with operator Exists and no key (it tolerates every taint)."""
    allow_control_plane: bool = False
    """Allow tolerations of the control-plane taints and node selectors or node affinity that
    pick control-plane nodes (node-role.kubernetes.io/control-plane or master)."""

    # ------------------------------------------------------------------ loading

    @classmethod
    def settings_error(cls, variable: str, message: str) -> SettingsError:
        return SettingsError(f"{variable}: {message}")

    @classmethod
    def load(
        cls, env: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Settings:
        """Settings from ``env`` (default os.environ), the config file and the defaults."""
        return cls.from_environment(env, config_file)

    @field_validator(
        "namespaces",
        "image_pull_secrets",
        "allowed_images",
        "allowed_priority_classes",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple):
            return tuple(str(x).strip() for x in value if str(x).strip())
        return value

    @field_validator(
        "watch_server_timeout", "watch_client_timeout", "watch_connect_timeout", mode="before"
    )
    @classmethod
    def _none_words(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @field_validator("engine_image_pull_policy")
    @classmethod
    def _pull_policy(cls, value: str) -> str:
        if value not in PULL_POLICIES:
            raise ValueError("must be Always, IfNotPresent or Never")
        return value

    @field_validator("engine_image")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("reconcile_interval_seconds")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("pending_deadline_seconds", "engine_pushgateway_retention_seconds")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @field_validator("api_connections")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value

    @field_validator("history_limit")
    @classmethod
    def _history_limit(cls, value: int) -> int:
        if not 0 <= value <= HISTORY_MAX:
            raise ValueError(f"must be between 0 and {HISTORY_MAX}")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"unknown level {value!r}")
        return value

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


DEFAULTS = Settings()
