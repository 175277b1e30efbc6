"""Settings: env > config file > defaults, and clear errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubequant_operator.settings import Settings, SettingsError


def test_defaults() -> None:
    s = Settings.load(env={})
    assert s.namespaces == ()
    assert s.clusterwide
    assert s.engine_image == "ghcr.io/kubequant/engine:0.1.0"
    assert s.gpu_resource_name == "nvidia.com/gpu"
    assert s.watch_server_timeout == 300


def test_env_overrides_file_overrides_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "KUBEQUANT_ENGINE_IMAGE: registry.local/engine:file\n"
        "default_cpu: '3'\n"
        "namespaces: [a, b]\n"
        "KUBEQUANT_PENDING_DEADLINE_SECONDS: 42\n"
    )
    env = {
        "KUBEQUANT_CONFIG_FILE": str(cfg),
        "KUBEQUANT_ENGINE_IMAGE": "registry.local/engine:env",
        "KUBEQUANT_IMAGE_PULL_SECRETS": "one, two ,",
        "KUBEQUANT_WATCH_CLIENT_TIMEOUT": "none",
    }
    s = Settings.load(env=env)
    assert s.engine_image == "registry.local/engine:env"  # env wins
    assert s.default_cpu == "3"  # from the file (field name)
    assert s.namespaces == ("a", "b")
    assert s.pending_deadline_seconds == 42  # from the file (env name)
    assert s.image_pull_secrets == ("one", "two")
    assert s.watch_client_timeout is None
    assert not s.clusterwide


def test_comma_namespaces_from_env() -> None:
    s = Settings.load(env={"KUBEQUANT_NAMESPACES": "team-a,team-b"})
    assert s.namespaces == ("team-a", "team-b")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"KUBEQUANT_METRICS_PORT": "eighty"}, "metrics_port"),
        ({"KUBEQUANT_METRICS_PORT": "70000"}, "KUBEQUANT_METRICS_PORT"),
        ({"KUBEQUANT_ENGINE_IMAGE_PULL_POLICY": "Sometimes"}, "PULL_POLICY"),
        ({"KUBEQUANT_RECONCILE_INTERVAL_SECONDS": "0"}, "RECONCILE_INTERVAL"),
        ({"KUBEQUANT_LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        Settings.load(env=env)


def test_bad_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SettingsError, match="KUBEQUANT_CONFIG_FILE"):
        Settings.load(env={"KUBEQUANT_CONFIG_FILE": str(missing)})
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="mapping"):
        Settings.load(env={"KUBEQUANT_CONFIG_FILE": str(listy)})


def test_env_names_are_the_helm_contract() -> None:
    names = set(Settings().env_names().values())
    for required in (
        "KUBEQUANT_NAMESPACES",
        "KUBEQUANT_ENGINE_IMAGE",
        "KUBEQUANT_ENGINE_IMAGE_PULL_POLICY",
        "KUBEQUANT_IMAGE_PULL_SECRETS",
        "KUBEQUANT_DEFAULT_CPU",
        "KUBEQUANT_DEFAULT_MEMORY",
        "KUBEQUANT_GPU_RESOURCE_NAME",
        "KUBEQUANT_PENDING_DEADLINE_SECONDS",
        "KUBEQUANT_RECONCILE_INTERVAL_SECONDS",
        "KUBEQUANT_METRICS_PORT",
        "KUBEQUANT_HEALTH_PORT",
        "KUBEQUANT_LOG_LEVEL",
        "KUBEQUANT_ENGINE_PUSHGATEWAY_URL",
        "KUBEQUANT_ENGINE_METRICS_PORT",
        "KUBEQUANT_WATCH_SERVER_TIMEOUT",
        "KUBEQUANT_WATCH_CLIENT_TIMEOUT",
        "KUBEQUANT_WATCH_CONNECT_TIMEOUT",
    ):
        assert required in names
