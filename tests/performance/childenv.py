"""The environment a benchmark gives an engine child process: offline, no cluster, no
Pushgateway, its own work directory, metrics on a free port."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def engine_env(
    work: Path,
    *,
    repeats: int,
    device: str = "cpu",
    log_level: str = "INFO",
    engine_source: Path | None = None,
) -> dict[str, str]:
    """This process' environment for an engine child working under ``work``; with
    ``engine_source``, the child imports the engine from that tree (e.g. a commit's export)."""
    env = dict(os.environ)
    for name in ("KUBEQUANT_PUSHGATEWAY_URL", "KUBERNETES_SERVICE_HOST", "KUBEQUANT_CONFIG_FILE"):
        env.pop(name, None)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "KUBEQUANT_WORK_DIR": str(work / "engine-work"),
            "KUBEQUANT_TERMINATION_LOG": str(work / "termination-log"),
            "KUBEQUANT_ENGINE_METRICS_PORT": "0",
            "KUBEQUANT_BENCH_REPEATS": str(repeats),
            "KUBEQUANT_DEVICE": device,
            "KUBEQUANT_LOG_LEVEL": log_level,
        }
    )
    if engine_source is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(engine_source), str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
    return env
