"""Loading models and artifacts for the engine: task detection, originals, tokenizers.

Everything the pipeline and the methods share about torch models lives here, so that the
pipeline never imports a quantization library and a method never re-implements loading.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubequant_api.constants import ARTIFACT_META_FILE, MODEL_FIELD, TASK_FIELD, Task
from kubequant_api.errors import InvalidSpecError
from optimizer_job.methods.base import (
    ArtifactInfo,
    IncompatibleError,
    InferenceModel,
    MethodError,
    get_method,
)

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
WEIGHT_FILES_INDEXED = ("pytorch_model.bin.index.json",)
# Files that make a model directory's tokenizer; methods copy these into every artifact.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def read_config(source_dir: Path) -> dict[str, Any]:
    """The model's config.json; InvalidSpecError naming spec.model.uri when missing/corrupt."""
    path = source_dir / "config.json"
    if not path.is_file():
        raise InvalidSpecError(MODEL_FIELD, f"no config.json in the model directory {source_dir}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSpecError(MODEL_FIELD, f"config.json is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidSpecError(MODEL_FIELD, "config.json does not hold a JSON object")
    return config


def _check_weights(source_dir: Path) -> None:
    names = (*WEIGHT_FILES, *WEIGHT_FILES_INDEXED)
    if any((source_dir / name).is_file() for name in names):
        return
    if any(source_dir.glob("*.safetensors")):
        return
    raise InvalidSpecError(
        MODEL_FIELD,
        f"no model weights in {source_dir} (expected model.safetensors, a sharded "
        "safetensors index or pytorch_model.bin)",
    )


def detect_task(source_dir: Path) -> Task:
    """The model's task from config.json ``architectures``; checks the weights exist too."""
    config = read_config(source_dir)
    _check_weights(source_dir)
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        raise InvalidSpecError(MODEL_FIELD, "config.json 'architectures' is not a list")
    names = [str(a) for a in architectures]
    if any(a.endswith("ForCausalLM") for a in names):
        return Task.CAUSAL_LM
    if any(a.endswith("ForSequenceClassification") for a in names):
        return Task.SEQUENCE_CLASSIFICATION
    return Task.FEATURE_EXTRACTION


def auto_class(task: Task | str) -> Any:
    """The transformers Auto class that loads a model for ``task``."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    classes = {
        Task.CAUSAL_LM: AutoModelForCausalLM,
        Task.FEATURE_EXTRACTION: AutoModel,
        Task.SEQUENCE_CLASSIFICATION: AutoModelForSequenceClassification,
    }
    try:
        return classes[Task(task)]
    except (KeyError, ValueError) as exc:
        raise IncompatibleError(TASK_FIELD, f"unsupported task {task!r}") from exc


def output_tensor(task: Task | str, outputs: Any) -> Any:
    """The tensor evaluation compares, out of a transformers model's outputs."""
    if Task(task) == Task.FEATURE_EXTRACTION:
        return outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    return outputs.logits if hasattr(outputs, "logits") else outputs[0]


def _grad_context(mode: str) -> Any:
    import torch

    return torch.no_grad() if mode == "no_grad" else torch.inference_mode()


class TorchInferenceModel:
    """An ``InferenceModel`` around a torch module (original or quantized).

    ``grad_mode`` is ``"inference"`` (torch.inference_mode) or ``"no_grad"`` for libraries
    whose kernels refuse inference tensors (optimum-quanto int4).
    """

    def __init__(
        self, module: Any, task: Task | str, device: str = "cpu", grad_mode: str = "inference"
    ) -> None:
        self.module = module
        self.task = Task(task)
        self.device = device
        self.grad_mode = grad_mode
        module.eval()

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        import numpy as np
        import torch

        ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64), device=self.device)
        mask = torch.as_tensor(np.asarray(attention_mask, dtype=np.int64), device=self.device)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self.task == Task.CAUSAL_LM:
            kwargs["use_cache"] = False
        with _grad_context(self.grad_mode):
            out = output_tensor(self.task, self.module(**kwargs))
            return out.detach().to(device="cpu", dtype=torch.float32).numpy()

    def close(self) -> None:
        self.module = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is always there in the engine
            pass


def load_original(
    source_dir: Path, task: Task | str, device: str = "cpu", trust_remote_code: bool = False
) -> InferenceModel:
    """The unquantized model in fp32, as the baseline every artifact is compared with."""
    import torch
    from safetensors import SafetensorError

    read_config(source_dir)
    _check_weights(source_dir)
    try:
        module = auto_class(task).from_pretrained(
            str(source_dir), dtype=torch.float32, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise InvalidSpecError(MODEL_FIELD, f"cannot load the model: {exc}") from exc
    return TorchInferenceModel(module.to(device), task, device)


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved in ``model_dir`` (a pad token is set when the model lacks one)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(model_dir), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidSpecError(MODEL_FIELD, f"cannot load the tokenizer: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def copy_tokenizer(source_dir: Path, out_dir: Path) -> list[str]:
    """Copy the tokenizer (and generation config) files so an artifact is self-contained."""
    import shutil

    copied = []
    for name in TOKENIZER_FILES:
        src = source_dir / name
        if src.is_file() and not (out_dir / name).exists():
            shutil.copy2(src, out_dir / name)
            copied.append(name)
    return copied


def load_artifact(artifact_dir: Path, device: str = "cpu") -> InferenceModel:
    """Load an artifact by the method named in its kubequant-artifact.json."""
    meta = artifact_dir / ARTIFACT_META_FILE
    if not meta.is_file():
        raise MethodError(
            f"{artifact_dir} is not a kubequant artifact: {ARTIFACT_META_FILE} missing"
        )
    try:
        info = ArtifactInfo.read(artifact_dir)
    except (OSError, TypeError, json.JSONDecodeError) as exc:
        raise MethodError(f"{meta} is unreadable: {exc}") from exc
    return get_method(info.method).load(artifact_dir, info, device)


# Modules each method imports lazily; importing them up front makes a later peak-memory
# measurement of quantize() see the model's memory, not one-time library imports (~200-400 MB).
_RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "torchao": ("torchao.quantization", "torchao.prototype.quantization.int4"),
    "bnb": ("bitsandbytes",),
    "quanto": ("optimum.quanto",),
    "onnx": ("onnx", "onnxruntime", "onnxruntime.quantization", "onnxscript", "torch.onnx"),
    "gptq": ("llmcompressor", "llmcompressor.entrypoints.oneshot", "datasets"),
    "awq": ("llmcompressor", "llmcompressor.entrypoints.oneshot", "datasets"),
}


def preload_runtime(
    method: str | None = None, source_dir: Path | None = None, task: Task | str | None = None
) -> None:
    """Import transformers' model machinery, the model's class (when ``source_dir`` and
    ``task`` are given) and ``method``'s library ahead of time."""
    import importlib

    import transformers

    for name in ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        getattr(transformers, name)
    importlib.import_module("transformers.modeling_utils")
    importlib.import_module("transformers.quantizers.auto")
    if source_dir is not None and task is not None:
        config = transformers.AutoConfig.from_pretrained(str(source_dir))
        mapping = auto_class(task)._model_mapping
        if type(config) in mapping:
            mapping[type(config)]  # indexing imports the model's module
    if method is None:
        return
    family = method.split("-", 1)[0]
    for module in _RUNTIME_MODULES.get(family, ()):
        importlib.import_module(module)


def dir_size(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def weights_size(path: Path) -> int:
    """Bytes of the weight files under ``path`` (safetensors, torch, onnx and their data)."""
    suffixes = {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".data"}
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)


@contextmanager
def freed() -> Iterator[None]:
    """Run a block, then return what it left behind to the allocator."""
    try:
        yield
    finally:
        gc.collect()
