"""The settings' variables and the Job's environment contract, seen from both sides."""

from __future__ import annotations

import re
from pathlib import Path

from kubequant_api.jobenv import ENV_PUSHGATEWAY_URL, JOB_ENV
from kubequant_api.models import parse_spec
from kubequant_api.settings import CONFIG_FILE_ENV
from kubequant_operator import builders
from kubequant_operator.settings import Settings
from optimizer_job.settings import ENV_VARS, EngineSettings
from tests.fixtures.operator import make_object

ENV_EXAMPLE = Path(__file__).resolve().parents[3] / ".env.example"


def test_env_example_lists_every_variable_of_both_components() -> None:
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    read = set(Settings.env_names().values()) | {name for name, *_ in ENV_VARS}
    assert CONFIG_FILE_ENV in read
    assert not read - listed, f"read but not in .env.example: {sorted(read - listed)}"


def test_the_operator_sets_the_contract_and_the_engine_reads_it() -> None:
    obj = make_object()
    s = Settings(engine_pushgateway_url="http://pgw:9091", engine_metrics_port=9400)
    job = builders.build_job(obj, parse_spec(obj["spec"]), s)
    container = job["spec"]["template"]["spec"]["containers"][0]
    set_on_pod = {e["name"] for e in container["env"]}
    assert set_on_pod == set(JOB_ENV)
    engine_reads = set(EngineSettings.env_names().values())
    ours = {name for name in JOB_ENV if name.startswith("KUBEQUANT_")}
    assert ours <= engine_reads, f"set but never read: {sorted(ours - engine_reads)}"
    without_pushgateway = builders.build_job(obj, parse_spec(obj["spec"]), Settings())
    env = without_pushgateway["spec"]["template"]["spec"]["containers"][0]["env"]
    assert ENV_PUSHGATEWAY_URL not in {e["name"] for e in env}


def test_the_engine_loads_what_the_operator_sets() -> None:
    obj = make_object()
    job = builders.build_job(obj, parse_spec(obj["spec"]), Settings(engine_metrics_port=9400))
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    loaded = EngineSettings.from_environment(env)
    assert loaded.metrics_port == 9400
    assert loaded.object_name == obj["metadata"]["name"]
    assert loaded.object_uid == obj["metadata"]["uid"]
    assert loaded.object_generation == str(obj["metadata"]["generation"])
    assert loaded.cache_dir == Path(env["HF_HOME"]) / "hub"
    assert str(loaded.pvc_mount_root) == builders.PVC_MOUNT_ROOT
    assert str(loaded.work_dir) == builders.WORK_DIR
