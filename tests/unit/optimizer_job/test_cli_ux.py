"""The engine's command line as users meet it: --version, -o table|json|yaml, --log-format,
shell completion (for all three programs), each error once, and logs that stay JSON when
libraries log on their own (loguru, warnings, progress bars)."""

from __future__ import annotations

import json
import logging
import os
import pty
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubequant_api.models import Measurements, Result
from optimizer_job.cli import main, print_results
from optimizer_job.results import RESULTS_KIND
from tests.fixtures.storage import EngineEnv, write_manifest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The engine sets up the root logger and loguru for its process; put both back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as a JSON object (fails on the first that is not one)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    parsed = []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(obj, dict), line
        parsed.append(obj)
    return parsed


def dry_run_manifest(tmp_path: Path, minilm_path: Path) -> Path:
    return write_manifest(
        tmp_path / "m.yaml",
        {
            "model": {"uri": f"file://{minilm_path}"},
            "method": "torchao-int8-weight",
            "output": {"uri": f"file://{tmp_path / 'out'}"},
            "dryRun": True,
        },
    )


# -- --version and completion


def test_version_names_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"kubequant-engine {metadata.version('kubequant')}"


def _operator_main(argv: list[str]) -> int:
    from kubequant_operator.main import main as operator_main

    return operator_main(argv)


def _localkube_main(argv: list[str]) -> int:
    from kubequant_localkube.cli import main as localkube_main

    return localkube_main(argv)


def _kubectl_plugin_main(argv: list[str]) -> int:
    from kubequant_kubectl.cli import main as plugin_main

    return plugin_main(argv)


PROGRAMS: dict[str, tuple[Callable[[list[str]], int], tuple[str, ...]]] = {
    "kubequant-engine": (main, ("run-in-cluster", "--log-format", "--output-format", "--file")),
    "kubequant-operator": (_operator_main, ("--version",)),
    "kubequant-localkube": (_localkube_main, ("serve", "--run-pods", "--state-dir")),
    "kubectl-kubequant": (_kubectl_plugin_main, ("candidates", "history", "--kubeconfig")),
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_each_program_prints_its_completion(
    program: str, shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    entry, words = PROGRAMS[program]
    with pytest.raises(SystemExit) as exc:
        entry(["--print-completion", shell])
    assert exc.value.code == 0
    script = capsys.readouterr().out
    assert len(script) > 500
    for word in (*words, "--version", "--print-completion"):
        assert word in script, (program, shell, word)
    if shell == "zsh":
        assert script.startswith(f"#compdef {program}")
    else:
        assert f"complete -o bashdefault -F _shtab_{program.replace('-', '_')} {program}" in (
            script
        )


@pytest.mark.parametrize("program", ["kubequant-operator", "kubequant-localkube"])
def test_other_programs_print_their_version(
    program: str, capsys: pytest.CaptureFixture[str]
) -> None:
    entry, _ = PROGRAMS[program]
    with pytest.raises(SystemExit) as exc:
        entry(["--version"])
    assert exc.value.code == 0
    dist = "kubequant-localkube" if program == "kubequant-localkube" else "kubequant"
    assert capsys.readouterr().out.strip() == f"{program} {metadata.version(dist)}"


def test_console_scripts_are_declared() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    local = tomllib.loads((REPO / "tools/localkube/pyproject.toml").read_text())["project"]
    assert {**scripts, **local["scripts"]}.keys() == PROGRAMS.keys()


# -- -o table|json|yaml


def test_output_formats_print_the_results_document(
    minilm_path: Path,
    tmp_path: Path,
    engine_env: EngineEnv,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    manifest = dry_run_manifest(tmp_path, minilm_path)
    results = tmp_path / "results.json"
    code, out, err = run_main(
        ["run", "-f", str(manifest), "-o", "json", "--results", str(results)], capsys
    )
    assert code == 0, err
    doc = json.loads(out)  # stdout is the document alone: logs are on stderr
    assert doc == json.loads(results.read_text())
    assert doc["reason"] == "DryRunSucceeded" and doc["kind"] == RESULTS_KIND
    assert doc["result"]["plan"]["candidates"][0]["method"] == "torchao-int8-weight"

    code, out, err = run_main(["run", "-f", str(manifest), "--output-format", "yaml"], capsys)
    assert code == 0, err
    as_yaml = yaml.safe_load(out)
    assert as_yaml["reason"] == "DryRunSucceeded"
    assert as_yaml["result"]["plan"]["model"] == doc["result"]["plan"]["model"]

    code, out, err = run_main(["run", "-f", str(manifest), "-o", "table"], capsys)
    assert code == 0, err
    assert out.lstrip().startswith("DryRunSucceeded:")
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)

    with pytest.raises(SystemExit) as exc:
        main(["run", "-f", str(manifest), "-o", "xml"])
    assert exc.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_the_table_has_the_figures_a_user_compares() -> None:
    result = Result(
        method="gptq",
        params={"bits": 4},
        original_size_bytes=988_000_000,
        optimized_size_bytes=457_000_000,
        compression_ratio=2.162,
        speedup=1.31,
        cosine_similarity=0.991,
        perplexity_increase_percent=3.2,
        quality_gate="Passed",
        baseline=Measurements(latency_ms=40.0, tokens_per_second=3200.0),
        optimized=Measurements(latency_ms=30.5, tokens_per_second=4196.0),
    )
    doc = {"reason": "Succeeded", "message": "done", "result": result.to_api()}
    buf = StringIO()
    print_results(doc, "table", buf)
    rows = {line.split()[0]: line.split()[1:] for line in buf.getvalue().splitlines() if line}
    assert rows["method"] == ["gptq"]
    assert rows["size"][-2:] == ["988000000", "457000000"]
    assert rows["compression"][-1] == "2.162"
    assert rows["latencyMs"] == ["40", "30.5"]
    assert rows["speedup"] == ["1.31"]
    assert rows["perplexityIncreasePercent"] == ["3.2"]
    assert rows["qualityGate"] == ["Passed"]


# -- --log-format, each error once


def test_json_logs_are_json_lines_and_text_logs_are_not(
    minilm_path: Path,
    tmp_path: Path,
    engine_env: EngineEnv,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    manifest = dry_run_manifest(tmp_path, minilm_path)
    # auto on a stream that is not a terminal (captured): JSON.
    code, _, err = run_main(["run", "-f", str(manifest)], capsys)
    assert code == 0
    lines = json_lines(err)
    stages = [ln["stage"] for ln in lines if "stage" in ln]
    assert stages[0] == "Loading" and stages[-1] == "Done"
    assert {ln["component"] for ln in lines} == {"engine"}

    code, _, err = run_main(["run", "-f", str(manifest), "--log-format", "text"], capsys)
    assert code == 0
    text = [ln for ln in err.splitlines() if ln.strip()]
    assert text and not any(ln.lstrip().startswith("{") for ln in text)
    assert any(" info " in ln and "stage Done, 100%" in ln for ln in text)
    assert "\r" not in err, "no progress bar when stderr is not a terminal"

    # The option goes before the command's name too.
    missing = tmp_path / "missing.yaml"
    code, _, err = run_main(["--log-format", "text", "validate", "-f", str(missing)], capsys)
    assert code == 2 and " error " in err and not err.lstrip().startswith("{")


def test_log_format_from_the_environment(
    tmp_path: Path,
    engine_env: EngineEnv,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    restore_logging: None,
) -> None:
    missing = tmp_path / "missing.yaml"
    monkeypatch.setenv("KUBEQUANT_LOG_FORMAT", "text")
    code, _, err = run_main(["validate", "-f", str(missing)], capsys)
    assert code == 2 and " error " in err and not err.startswith("{")
    code, _, err = run_main(["validate", "-f", str(missing), "--log-format", "json"], capsys)
    assert code == 2 and json_lines(err)[0]["level"] == "error"
    monkeypatch.setenv("KUBEQUANT_LOG_FORMAT", "xml")
    code, _, err = run_main(["validate", "-f", str(missing)], capsys)
    assert code == 2 and "KUBEQUANT_LOG_FORMAT" in err


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_each_error_is_reported_once(
    log_format: str,
    tmp_path: Path,
    engine_env: EngineEnv,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed")
    code, out, err = run_main(["run", "-f", str(broken), "--log-format", log_format], capsys)
    assert code == 2
    assert out == ""
    assert (out + err).count(f"{broken}: not valid YAML") == 1, err
    if log_format == "json":
        (line,) = [ln for ln in json_lines(err) if ln["level"] == "error"]
        assert line["reason"] == "InvalidSpec" and line["exit_code"] == 2


def _run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """The engine with stderr on a pseudo-terminal (what a user's shell gives it)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "optimizer_job", *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        text=False,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            proc.kill()
            pytest.fail("the engine wrote nothing for 300 s")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    return proc.wait(timeout=60), out, b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_text_and_a_progress_bar(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv
) -> None:
    manifest = dry_run_manifest(tmp_path, minilm_path)
    env = {k: v for k, v in os.environ.items() if k != "KUBEQUANT_LOG_FORMAT"}
    code, out, err = _run_on_a_terminal(["run", "-f", str(manifest), "-o", "json"], env)
    assert code == 0, err
    assert json.loads(out)["reason"] == "DryRunSucceeded"
    assert "\r\x1b[2K[" in err  # the bar, redrawn in place
    assert "] 100% Done" in err
    lines = [ln.strip() for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert not any(ln.startswith("{") for ln in lines), lines
    # --log-format json on a terminal: JSON anyway, no bar.
    code, _, err = _run_on_a_terminal(
        ["run", "-f", str(manifest), "--log-format", "json", "-o", "json"], env
    )
    assert code == 0
    assert "\x1b[2K" not in err
    json_lines(err.replace("\r\n", "\n"))


# -- libraries that log on their own


def test_loguru_goes_through_the_engine_logs(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    from loguru import logger

    from optimizer_job.report.logs import configure_logging

    assert configure_logging("INFO", "json") == "json"
    logger.debug("below the level")
    logger.info("plain {}", "info")
    logger.success("a success")
    logger.log("WARNING", "careful")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    lines = json_lines(capsys.readouterr().err)
    assert [(ln["level"], ln["msg"]) for ln in lines] == [
        ("info", "plain info"),
        ("info", "a success"),
        ("warning", "careful"),
        ("error", "it failed"),
    ]
    assert {ln["source_module"] for ln in lines} == {__name__}
    assert lines[1]["source_level"] == "SUCCESS"
    assert "ValueError: boom" in lines[3]["exc"]

    # The engine's level now applies to loguru too.
    configure_logging("WARNING", "json")
    logger.info("quiet now")
    logger.warning("still heard")
    assert [ln["msg"] for ln in json_lines(capsys.readouterr().err)] == ["still heard"]


LIBRARY_NOISE = """
import logging, sys, warnings
from optimizer_job.report.logs import configure_logging
configure_logging("INFO", sys.argv[1])
import llmcompressor  # reconfigures loguru (a stdout sink) when imported
from loguru import logger
logger.warning("after llmcompressor")
logger.bind(log_once=True).info("once")
logger.bind(log_once=True).info("once")
warnings.warn("a library warning")
from tqdm import tqdm
for _ in tqdm(range(3), desc="layers"):
    pass
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.modeling_utils").warning("from transformers")
logging.getLogger("torch").warning("from torch")
"""


@pytest.mark.slow
def test_library_logs_and_progress_bars_stay_json(tmp_path: Path) -> None:
    """llm-compressor (loguru, configured at its import), warnings, tqdm, transformers and
    torch, in a fresh interpreter: stdout stays empty and every stderr line is JSON."""
    script = tmp_path / "noise.py"
    script.write_text(LIBRARY_NOISE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE"))}
    proc = subprocess.run(
        [sys.executable, str(script), "json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = json_lines(proc.stderr)
    by_msg = {ln["msg"].strip(): ln for ln in lines}
    assert by_msg["after llmcompressor"]["source_module"] == "__main__"
    assert by_msg["from transformers"]["logger"] == "transformers.modeling_utils"
    assert by_msg["from torch"]["logger"] == "torch"
    assert sum(ln["msg"] == "once" for ln in lines) == 1
    assert any(ln["logger"] == "py.warnings" and "a library warning" in ln["msg"] for ln in lines)
    assert not any("layers" in ln["msg"] for ln in lines)  # no progress bar at all

    # Text: the bar is left alone (a terminal wants it); the lines are readable.
    proc = subprocess.run(
        [sys.executable, str(script), "text"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "layers: 100%" in proc.stderr
    assert any(
        ln.endswith("warning after llmcompressor") for ln in proc.stderr.splitlines()
    ), proc.stderr


def test_a_library_message_repeated_per_layer_is_logged_once(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    from optimizer_job.report.logs import configure_logging

    configure_logging("INFO", "json")
    library = logging.getLogger("bitsandbytes.autograd._functions")
    for dtype in ("torch.bfloat16", "torch.bfloat16", "torch.float32"):
        library.warning("MatMul8bitLt: inputs will be cast from %s to float16", dtype)
    library.info("MatMul8bitLt: inputs will be cast from %s to float16", "torch.bfloat16")
    library.warning("another message")
    own = logging.getLogger("optimizer_job.pipeline")
    for _ in range(2):
        own.info("the engine's own line, %s", "again")
    lines = json_lines(capsys.readouterr().err)
    messages = [(ln["level"], ln["msg"]) for ln in lines]
    assert messages == [
        ("warning", "MatMul8bitLt: inputs will be cast from torch.bfloat16 to float16"),
        ("info", "MatMul8bitLt: inputs will be cast from torch.bfloat16 to float16"),
        ("warning", "another message"),
        ("info", "the engine's own line, again"),
        ("info", "the engine's own line, again"),
    ]
