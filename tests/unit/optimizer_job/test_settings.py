"""Engine settings: environment > config file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubequant_api.errors import InvalidSpecError
from optimizer_job.settings import ENV_VARS, load_settings


def test_defaults(tmp_path: Path) -> None:
    s = load_settings({"HF_HOME": str(tmp_path / "hf")})
    assert s.cache_dir == tmp_path / "hf" / "hub"
    assert s.pvc_mount_root == Path("/mnt/kubequant/pvc")
    assert s.metrics_port == 0 and s.pushgateway_url is None
    assert s.device == "auto" and s.log_level == "INFO" and s.bench_repeats == 10
    assert s.resolved_device() in ("cpu", "cuda")


def test_environment_beats_config_file_beats_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "engine.yaml"
    cfg.write_text(f"work_dir: {tmp_path}/from-file\nmetrics_port: 9100\ndevice: cpu\n")
    env = {
        "KUBEQUANT_CONFIG_FILE": str(cfg),
        "KUBEQUANT_ENGINE_METRICS_PORT": "9200",
        "KUBEQUANT_PUSHGATEWAY_URL": "http://127.0.0.1:9091",
        "KUBEQUANT_TERMINATION_LOG": str(tmp_path / "term"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
    }
    s = load_settings(env)
    assert s.work_dir == tmp_path / "from-file"
    assert s.metrics_port == 9200
    assert s.device == "cpu"
    assert s.pushgateway_url == "http://127.0.0.1:9091"
    assert s.termination_log == tmp_path / "term"
    assert s.cache_dir == tmp_path / "hub"
    assert load_settings({**env, "KUBEQUANT_CACHE_DIR": "/c"}).cache_dir == Path("/c")


def test_unwritable_termination_log_is_ignored() -> None:
    s = load_settings({"KUBEQUANT_TERMINATION_LOG": "/proc/nope/termination-log"})
    assert s.termination_log is None


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"KUBEQUANT_DEVICE": "tpu"}, "KUBEQUANT_DEVICE"),
        ({"KUBEQUANT_ENGINE_METRICS_PORT": "http"}, "KUBEQUANT_ENGINE_METRICS_PORT"),
        ({"KUBEQUANT_ENGINE_METRICS_PORT": "70000"}, "KUBEQUANT_ENGINE_METRICS_PORT"),
        ({"KUBEQUANT_LOG_LEVEL": "chatty"}, "KUBEQUANT_LOG_LEVEL"),
        ({"KUBEQUANT_CONFIG_FILE": "/nonexistent/engine.yaml"}, "KUBEQUANT_CONFIG_FILE"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidSpecError, match=field):
        load_settings(env)


def test_unknown_config_keys_are_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "engine.yaml"
    cfg.write_text("wrok_dir: /x\n")
    with pytest.raises(InvalidSpecError, match="wrok_dir"):
        load_settings({"KUBEQUANT_CONFIG_FILE": str(cfg)})


def test_every_variable_is_documented() -> None:
    names = {name for name, *_ in ENV_VARS}
    assert {"KUBEQUANT_WORK_DIR", "KUBEQUANT_CACHE_DIR", "KUBEQUANT_DEVICE"} <= names
