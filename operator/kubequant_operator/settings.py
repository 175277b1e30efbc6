"""Every setting of the operator, in one place.

Precedence: environment variable > YAML config file (``KUBEQUANT_CONFIG_FILE``) > default.
The config file is a mapping whose keys are either the environment names
(``KUBEQUANT_ENGINE_IMAGE``) or the field names below (``engine_image``). The Helm chart sets
the environment names; keep them stable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from kubequant_api.errors import KubequantError


class SettingsError(KubequantError):
    """A setting has a value the operator cannot use; the message names it."""


CONFIG_FILE_ENV = "KUBEQUANT_CONFIG_FILE"


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
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
    metrics_port: int = 8080
    """Port of the Prometheus /metrics endpoint (0: any free port)."""
    health_port: int = 8081
    """Port of the liveness endpoint /healthz (0: any free port)."""
    bind_address: str = "0.0.0.0"  # noqa: S104 - a pod serves its probes on all interfaces
    """Address the metrics and liveness endpoints listen on."""
    log_level: str = "INFO"
    """Log level of the operator (DEBUG, INFO, WARNING, ERROR)."""
    engine_pushgateway_url: str = ""
    """Pushgateway the engine pushes its run metrics to (empty: none)."""
    engine_metrics_port: int = 0
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
    kubeconfig: str = ""
    """Kubeconfig file (standard KUBECONFIG variable); empty: in-cluster service account."""

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls, env: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Settings:
        """Settings from ``env`` (default os.environ), the config file and the defaults."""
        environ = dict(os.environ if env is None else env)
        path = config_file or environ.get(CONFIG_FILE_ENV, "")
        from_file: dict[str, Any] = {}
        if path:
            from_file = _read_config_file(Path(path))
        values: dict[str, Any] = {}
        for f in fields(cls):
            env_name = "KUBECONFIG" if f.name == "kubeconfig" else f"KUBEQUANT_{f.name.upper()}"
            if env_name in environ:
                values[f.name] = _convert(f.name, env_name, environ[env_name], f.type)
            elif env_name in from_file or f.name in from_file:
                raw = from_file.get(env_name, from_file.get(f.name))
                values[f.name] = _convert(f.name, f"{path}: {env_name}", raw, f.type)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.engine_image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(
                "KUBEQUANT_ENGINE_IMAGE_PULL_POLICY: must be Always, IfNotPresent or Never, "
                f"got {self.engine_image_pull_policy!r}"
            )
        if not self.engine_image:
            raise SettingsError("KUBEQUANT_ENGINE_IMAGE: must not be empty")
        for name in ("metrics_port", "health_port", "engine_metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"KUBEQUANT_{name.upper()}: {port} is not a port number")
        if self.reconcile_interval_seconds <= 0:
            raise SettingsError("KUBEQUANT_RECONCILE_INTERVAL_SECONDS: must be > 0")
        if self.pending_deadline_seconds < 0:
            raise SettingsError("KUBEQUANT_PENDING_DEADLINE_SECONDS: must be >= 0")
        if self.api_connections < 1:
            raise SettingsError("KUBEQUANT_API_CONNECTIONS: must be >= 1")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"KUBEQUANT_LOG_LEVEL: unknown level {self.log_level!r}")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def env_names(self) -> dict[str, str]:
        """Environment variable name of every field (for documentation and tests)."""
        return {
            f.name: ("KUBECONFIG" if f.name == "kubeconfig" else f"KUBEQUANT_{f.name.upper()}")
            for f in fields(self)
        }


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SettingsError(f"{CONFIG_FILE_ENV}: cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{CONFIG_FILE_ENV}: {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{CONFIG_FILE_ENV}: {path} must hold a mapping of settings")
    return {str(k): v for k, v in data.items()}


def _optional(conv: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def inner(raw: Any) -> Any:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        return conv(raw)

    return inner


def _tuple(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, (list, tuple)):
        return tuple(str(x).strip() for x in raw if str(x).strip())
    return _split(str(raw))


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "tuple[str, ...]": _tuple,
    "str": lambda raw: str(raw).strip(),
    "int": lambda raw: int(str(raw).strip()),
    "float": lambda raw: float(str(raw).strip()),
    "int | None": _optional(lambda raw: int(str(raw).strip())),
    "float | None": _optional(lambda raw: float(str(raw).strip())),
}


def _convert(name: str, where: str, raw: Any, typ: Any) -> Any:
    conv = _CONVERTERS[str(typ)]
    try:
        return conv(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{where}: cannot use {raw!r} for {name} ({typ})") from exc


DEFAULTS = Settings()
