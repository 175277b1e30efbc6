"""Every artifact loads the way its model card says, outside kubequant, and is still right.

For each method that runs on this CPU, on MiniLM and (where it applies) the tiny causal LM:
quantize with the engine, write the model card, take the python block of its "How to load"
section literally, and run it in a fresh interpreter (``sys.executable -c``, offline, outside
the repository, no kubequant import) followed by a few lines that run the loaded model on
fixed inputs and print the outputs as JSON. Those are compared with the fp32 original within
the bounds the method tests hold the engine's own reload to.

quanto artifacts must not be loadable-but-wrong: plain ``from_pretrained`` has to refuse them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubequant_api.constants import MODEL_CARD_FILE, Task
from kubequant_api.models import Result
from optimizer_job import artifact, modeling
from optimizer_job.alignment import misaligned

from .conftest import Built, cosine, mean_pooled, private_copy, report
from .test_causal_methods import CAUSAL_BOUNDS
from .test_encoder_methods import ENCODER_BOUNDS

pytestmark = pytest.mark.slow

CHILD_TIMEOUT_S = 300
MARKER = "KUBEQUANT-OUTPUTS "
PROBE_TEXT = "Quantized models load with their ecosystem's own loader."

# Appended to the card's snippet: run ``model`` (or ``session``) on the inputs in argv[1].
RUN_TORCH = """
import json as _json, sys as _sys
import torch as _torch
_data = _json.load(open(_sys.argv[1]))
_ids, _mask = _torch.tensor(_data["ids"]), _torch.tensor(_data["mask"])
_kwargs = {"input_ids": _ids, "attention_mask": _mask}
if _data["task"] == "causal-lm":
    _kwargs["use_cache"] = False
with _torch.no_grad():
    _out = model(**_kwargs)
if _data["task"] == "causal-lm":
    _logits = _out.logits.float()
    _logp = _torch.log_softmax(_logits[:, :-1].double(), -1)
    _result = {
        "argmax": _logits.argmax(-1).tolist(),
        "target_logprob": _logp.gather(-1, _ids[:, 1:, None])[..., 0].tolist(),
    }
else:
    _hidden = _out.last_hidden_state.float()
    _w = _mask[..., None].float()
    _result = {"pooled": ((_hidden * _w).sum(1) / _w.sum(1).clamp(min=1.0)).tolist()}
_result["probe_ids"] = tokenizer(_data["probe"])["input_ids"]
print("KUBEQUANT-OUTPUTS " + _json.dumps(_result))
"""
RUN_ONNX = """
import json as _json, sys as _sys
import numpy as _np
_data = _json.load(open(_sys.argv[1]))
_ids = _np.asarray(_data["ids"], dtype=_np.int64)
_mask = _np.asarray(_data["mask"], dtype=_np.int64)
_inputs = [i.name for i in session.get_inputs()]
_feeds = {"input_ids": _ids, "attention_mask": _mask, "token_type_ids": _np.zeros_like(_ids)}
_out = session.run(None, {k: v for k, v in _feeds.items() if k in _inputs})[0].astype(_np.float64)
_result = {"inputs": _inputs, "outputs": [o.name for o in session.get_outputs()]}
if _data["task"] == "causal-lm":
    _shift = _out[:, :-1] - _out[:, :-1].max(-1, keepdims=True)
    _logp = _shift - _np.log(_np.exp(_shift).sum(-1, keepdims=True))
    _result["argmax"] = _out.argmax(-1).tolist()
    _result["target_logprob"] = _np.take_along_axis(_logp, _ids[:, 1:, None], -1)[..., 0].tolist()
else:
    _w = _mask[..., None].astype(_np.float64)
    _result["pooled"] = ((_out * _w).sum(1) / _np.maximum(_w.sum(1), 1.0)).tolist()
_result["probe_ids"] = tokenizer(_data["probe"])["input_ids"]
print("KUBEQUANT-OUTPUTS " + _json.dumps(_result))
"""

ENCODER_CASES = sorted(ENCODER_BOUNDS)
CAUSAL_CASES = sorted(CAUSAL_BOUNDS)


def write_card(built: Built, task: Task) -> str:
    """The model card the engine publishes for this artifact, written into it; its text."""
    card = artifact.model_card(
        Result(method=built.method, params=built.info.params),
        source_uri=f"file://{built.source}",
        task=str(task),
        gate=None,
        digest_value=artifact.digest(built.out_dir),
        source_dir=built.source,
        artifact_dir=built.out_dir,
        load_path=str(built.out_dir),
    )
    (built.out_dir / MODEL_CARD_FILE).write_text(card)
    return card


def card_snippet(card: str) -> str:
    """The single python block of the card's "How to load" section, as written."""
    section = card.split("## How to load", 1)
    assert len(section) == 2, "the model card has no 'How to load' section"
    blocks = re.findall(r"```python\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    assert len(blocks) == 1, f"expected one python block under 'How to load', got {len(blocks)}"
    snippet: str = blocks[0]
    return snippet


def run_card_snippet(built: Built, task: Task, ids: Any, mask: Any, tmp: Path) -> dict[str, Any]:
    """Run the card's snippet plus the output lines in a fresh, offline interpreter."""
    snippet = card_snippet(write_card(built, task))
    assert snippet.splitlines()[0] == f'path = "{built.out_dir}"'
    loads_onnx = "onnxruntime.InferenceSession" in snippet
    inputs = tmp / "inputs.json"
    inputs.write_text(
        json.dumps(
            {"ids": ids.tolist(), "mask": mask.tolist(), "task": str(task), "probe": PROBE_TEXT}
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-c", snippet + (RUN_ONNX if loads_onnx else RUN_TORCH), str(inputs)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"the card's snippet failed:\n{snippet}\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    assert len(lines) == 1, proc.stdout[-2000:]
    outputs: dict[str, Any] = json.loads(lines[0][len(MARKER) :])
    expected_probe = modeling.load_tokenizer(built.source)(PROBE_TEXT)["input_ids"]
    assert outputs["probe_ids"] == list(expected_probe), "the artifact's tokenizer differs"
    return outputs


@pytest.mark.parametrize("method", ENCODER_CASES)
def test_encoder_card_snippet_loads_the_artifact_in_a_fresh_process(
    method: str,
    *,
    minilm_path: Path,
    build_artifact: Callable[..., Built],
    eval_texts: list[str],
    reference_outputs: Callable[[Path, Task, list[str]], tuple[Any, Any, Any]],
    tmp_path: Path,
) -> None:
    min_cos = ENCODER_BOUNDS[method][0]
    ids, mask, ref = reference_outputs(minilm_path, Task.FEATURE_EXTRACTION, eval_texts)
    # The session's artifact (shared with test_encoder_methods.py), copied: the card is
    # written into it.
    built = private_copy(build_artifact(method, minilm_path, Task.FEATURE_EXTRACTION), tmp_path)
    outputs = run_card_snippet(built, Task.FEATURE_EXTRACTION, ids, mask, tmp_path)
    if method == "onnx-int8":
        assert outputs["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert outputs["outputs"] == ["last_hidden_state"]
    pooled = np.asarray(outputs["pooled"], dtype=np.float32)
    value = cosine(pooled, mean_pooled(ref, mask))
    report(f"{method} minilm card snippet, fresh process", {"cosine": round(value, 5)})
    assert value >= min_cos, f"{method}: mean-pooled cosine {value:.4f} < {min_cos}"


@pytest.mark.parametrize("method", CAUSAL_CASES)
def test_causal_card_snippet_loads_the_artifact_in_a_fresh_process(
    method: str,
    *,
    tiny_lm_path: Path,
    build_artifact: Callable[..., Built],
    eval_texts: list[str],
    reference_outputs: Callable[[Path, Task, list[str]], tuple[Any, Any, Any]],
    tmp_path: Path,
) -> None:
    min_top1, max_ppl_increase, _ = CAUSAL_BOUNDS[method]
    ids, mask, ref = reference_outputs(tiny_lm_path, Task.CAUSAL_LM, eval_texts)
    # The session's artifact (shared with test_causal_methods.py), copied: the card is
    # written into it.
    built = private_copy(build_artifact(method, tiny_lm_path, Task.CAUSAL_LM), tmp_path)
    outputs = run_card_snippet(built, Task.CAUSAL_LM, ids, mask, tmp_path)
    if method == "onnx-int8":
        assert outputs["inputs"] == ["input_ids", "attention_mask"]
        assert outputs["outputs"] == ["logits"]
    argmax = np.asarray(outputs["argmax"])
    same = (argmax == ref.argmax(-1)) & (mask == 1)
    top1 = float(same.sum() / mask.sum())
    valid = mask[:, 1:] == 1
    nll = -np.asarray(outputs["target_logprob"], dtype=np.float64)[valid]
    ppl = float(np.exp(nll.mean()))
    ref_shift = ref[:, :-1].astype(np.float64)
    ref_shift = ref_shift - ref_shift.max(-1, keepdims=True)
    ref_logp = ref_shift - np.log(np.exp(ref_shift).sum(-1, keepdims=True))
    base_nll = -np.take_along_axis(ref_logp, ids[:, 1:, None], -1)[..., 0][valid]
    base_ppl = float(np.exp(base_nll.mean()))
    increase = 100.0 * (ppl - base_ppl) / base_ppl
    report(
        f"{method} tiny-lm card snippet, fresh process",
        {"top1": round(top1, 4), "ppl_fp32": round(base_ppl, 3), "ppl": round(ppl, 3)},
    )
    assert top1 >= min_top1, f"{method}: top-1 agreement {top1:.4f} < {min_top1}"
    assert increase <= max_ppl_increase, f"{method}: perplexity +{increase:.2f}%"


@pytest.mark.parametrize(
    ("method", "model", "task"),
    [
        ("quanto-int8", "minilm", Task.FEATURE_EXTRACTION),
        ("quanto-int4", "tiny-lm", Task.CAUSAL_LM),
    ],
)
def test_plain_from_pretrained_refuses_a_quanto_artifact(
    method: str,
    model: str,
    task: Task,
    *,
    minilm_path: Path,
    tiny_lm_path: Path,
    build_artifact: Callable[..., Built],
) -> None:
    """transformers alone would load the folder with every quantized layer re-initialised at
    random; the artifact's config makes it refuse instead."""
    source = minilm_path if model == "minilm" else tiny_lm_path
    built = build_artifact(method, source, task)
    with pytest.raises(ValueError, match="quant_method"):
        modeling.auto_class(task).from_pretrained(str(built.out_dir))
    config = json.loads((built.out_dir / "config.json").read_text())
    assert config["quantization_config"]["quant_library"] == "optimum-quanto"


def test_a_bf16_quanto_int8_artifact_runs_in_a_fresh_process(
    *,
    tiny_lm_bf16_path: Path,
    build_artifact: Callable[..., Built],
    eval_texts: list[str],
    reference_outputs: Callable[[Path, Task, list[str]], tuple[Any, Any, Any]],
    tmp_path: Path,
) -> None:
    """bf16 activations take quanto's int8 matmul on CPU (``torch._weight_int8pack_mm``),
    which segfaults on a weight that is not 16-byte aligned in the mapped file: every weight
    matrix of the artifact is aligned, and the card's snippet runs it."""
    built = private_copy(build_artifact("quanto-int8", tiny_lm_bf16_path, Task.CAUSAL_LM), tmp_path)
    shards = sorted(built.out_dir.glob("*.safetensors"))
    assert shards and all(misaligned(shard) == [] for shard in shards)
    ids, mask, ref = reference_outputs(tiny_lm_bf16_path, Task.CAUSAL_LM, eval_texts)
    outputs = run_card_snippet(built, Task.CAUSAL_LM, ids, mask, tmp_path)
    argmax = np.asarray(outputs["argmax"])
    top1 = float(((argmax == ref.argmax(-1)) & (mask == 1)).sum() / mask.sum())
    report("quanto-int8 tiny-lm bf16 card snippet, fresh process", {"top1": round(top1, 4)})
    assert top1 >= CAUSAL_BOUNDS["quanto-int8"][0]
