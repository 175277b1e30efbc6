"""Engine settings: environment > config file (``KUBEQUANT_CONFIG_FILE``, YAML) > defaults.

Every variable the engine reads is listed in :data:`ENV_VARS` (name, default, meaning) so that
docs and ``.env.example`` can be generated from one place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from kubequant_api.errors import InvalidSpecError

CONFIG_FILE_ENV: Final = "KUBEQUANT_CONFIG_FILE"

# (environment variable, settings field, default shown in docs, meaning)
ENV_VARS: Final[tuple[tuple[str, str, str, str], ...]] = (
    (CONFIG_FILE_ENV, "", "unset", "YAML file with any of the settings below (keys: field names)"),
    ("KUBEQUANT_WORK_DIR", "work_dir", "$TMPDIR/kubequant-work", "scratch space for staging"),
    (
        "KUBEQUANT_CACHE_DIR",
        "cache_dir",
        "$HF_HUB_CACHE or $HF_HOME/hub or ~/.cache/huggingface/hub",
        "Hugging Face hub cache used for hf:// sources",
    ),
    (
        "KUBEQUANT_PVC_MOUNT_ROOT",
        "pvc_mount_root",
        "/mnt/kubequant/pvc",
        "where pvc://claim/path is mounted (claim/path below it)",
    ),
    (
        "KUBEQUANT_TERMINATION_LOG",
        "termination_log",
        "/dev/termination-log",
        "termination message file (ignored when not writable)",
    ),
    ("KUBEQUANT_ENGINE_METRICS_PORT", "metrics_port", "0", "Prometheus port; 0 disables"),
    ("KUBEQUANT_PUSHGATEWAY_URL", "pushgateway_url", "unset", "Pushgateway for final metrics"),
    ("KUBEQUANT_LOG_LEVEL", "log_level", "INFO", "DEBUG, INFO, WARNING, ERROR"),
    ("KUBEQUANT_DEVICE", "device", "auto", "auto (cuda when available), cpu or cuda"),
    (
        "KUBEQUANT_BENCH_REPEATS",
        "bench_repeats",
        "10",
        "timed forward passes per latency measurement (after 2 warm-ups)",
    ),
)

_DEVICES: Final = ("auto", "cpu", "cuda")
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


@dataclass(frozen=True)
class EngineSettings:
    work_dir: Path
    cache_dir: Path
    pvc_mount_root: Path = Path("/mnt/kubequant/pvc")
    termination_log: Path | None = Path("/dev/termination-log")
    metrics_port: int = 0
    pushgateway_url: str | None = None
    log_level: str = "INFO"
    device: str = "auto"
    bench_repeats: int = 10

    def resolved_device(self) -> str:
        """``cpu`` or ``cuda``; ``auto`` picks cuda when torch sees a GPU."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def _writable(path: Path) -> bool:
    if path.exists():
        return os.access(path, os.W_OK)
    return path.parent.is_dir() and os.access(path.parent, os.W_OK)


def load_settings(env: Mapping[str, str] | None = None) -> EngineSettings:
    """Build the settings from ``env`` (default: ``os.environ``) and the optional config file."""
    env = os.environ if env is None else env
    file_values: dict[str, Any] = {}
    config_file = env.get(CONFIG_FILE_ENV)
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidSpecError(CONFIG_FILE_ENV, f"cannot read {config_file}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidSpecError(CONFIG_FILE_ENV, f"{config_file} must hold a YAML mapping")
        file_values = dict(loaded or {})
    known = {field for _, field, _, _ in ENV_VARS if field}
    unknown = set(file_values) - known
    if unknown:
        raise InvalidSpecError(
            CONFIG_FILE_ENV, f"unknown keys {sorted(unknown)}; known: {sorted(known)}"
        )

    def get(env_name: str, field: str) -> Any:
        if env.get(env_name, "") != "":
            return env[env_name]
        return file_values.get(field)

    work_dir = get("KUBEQUANT_WORK_DIR", "work_dir")
    cache_dir = get("KUBEQUANT_CACHE_DIR", "cache_dir")
    pvc_root = get("KUBEQUANT_PVC_MOUNT_ROOT", "pvc_mount_root")
    term = get("KUBEQUANT_TERMINATION_LOG", "termination_log")
    port = get("KUBEQUANT_ENGINE_METRICS_PORT", "metrics_port")
    push = get("KUBEQUANT_PUSHGATEWAY_URL", "pushgateway_url")
    level = str(get("KUBEQUANT_LOG_LEVEL", "log_level") or "INFO").upper()
    device = str(get("KUBEQUANT_DEVICE", "device") or "auto").lower()
    repeats = get("KUBEQUANT_BENCH_REPEATS", "bench_repeats")

    def as_int(value: Any, name: str, default: int, low: int, high: int) -> int:
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except (TypeError, ValueError) as exc:
            raise InvalidSpecError(name, f"must be an integer, got {value!r}") from exc
        if not low <= number <= high:
            raise InvalidSpecError(name, f"must be between {low} and {high}, got {number}")
        return number

    if device not in _DEVICES:
        raise InvalidSpecError("KUBEQUANT_DEVICE", f"must be one of {_DEVICES}, got {device!r}")
    if level not in _LOG_LEVELS:
        raise InvalidSpecError("KUBEQUANT_LOG_LEVEL", f"must be one of {_LOG_LEVELS}")
    term_path: Path | None = Path(term) if term else Path("/dev/termination-log")
    if term_path is not None and not _writable(term_path):
        term_path = None
    return EngineSettings(
        work_dir=Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / "kubequant-work",
        cache_dir=Path(cache_dir) if cache_dir else _default_cache_dir(env),
        pvc_mount_root=Path(pvc_root) if pvc_root else Path("/mnt/kubequant/pvc"),
        termination_log=term_path,
        metrics_port=as_int(port, "KUBEQUANT_ENGINE_METRICS_PORT", 0, 0, 65535),
        pushgateway_url=str(push) if push else None,
        log_level=level,
        device=device,
        bench_repeats=as_int(repeats, "KUBEQUANT_BENCH_REPEATS", 10, 1, 1000),
    )
