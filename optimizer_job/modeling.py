"""Loading models and artifacts for the engine: task detection, originals, tokenizers.

The pipeline never imports a quantization library and a method never re-implements
loading. What the methods need themselves (the Auto class per task, the inference wrapper,
tokenizers) lives one layer down in :mod:`optimizer_job.loading`, re-exported here; this
module looks methods up only to load an artifact, so methods never import it.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubequant_api.constants import ARTIFACT_META_FILE, MODEL_FIELD, Task
from kubequant_api.errors import InvalidSpecError
from kubequant_api.methods import method_spec
from optimizer_job.loading import (
    TOKENIZER_FILES,
    TorchInferenceModel,
    auto_class,
    checkpoint_dtype,
    copy_tokenizer,
    load_tokenizer,
    output_tensor,
    placement,
    remote_code,
    torch_dtype_of,
    weights_size,
)
from optimizer_job.methods.base import ArtifactInfo, InferenceModel, MethodError, get_method

REMOTE_CODE_FIELD = "spec.model.trustRemoteCode"

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
WEIGHT_FILES_INDEXED = ("pytorch_model.bin.index.json",)


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


def check_remote_code(model_dir: Path, trust_remote_code: bool) -> None:
    """Refuse a model that ships its own code unless the spec allows running it; checked
    before transformers sees the model, so transformers never asks on stdin."""
    mapped = remote_code(model_dir)
    if mapped and not trust_remote_code:
        shown = ", ".join(f"{k} -> {v}" for k, v in list(mapped.items())[:4])
        raise InvalidSpecError(
            REMOTE_CODE_FIELD,
            f"the model ships its own code (auto_map: {shown}); kubequant runs code from a "
            f"model repository only with {REMOTE_CODE_FIELD}: true",
        )


def load_original(
    source_dir: Path, task: Task | str, device: str = "cpu", trust_remote_code: bool = False
) -> InferenceModel:
    """The unquantized model in the dtype its checkpoint is stored in (bf16/fp16 stay as
    they are, never a second full-precision copy), placed by :func:`loading.placement` (on
    CUDA over every visible GPU, the host taking what does not fit): the baseline every
    artifact is compared with."""
    from safetensors import SafetensorError

    read_config(source_dir)
    _check_weights(source_dir)
    dtype = checkpoint_dtype(source_dir)
    try:
        module = auto_class(task).from_pretrained(
            str(source_dir),
            dtype=torch_dtype_of(dtype),
            trust_remote_code=trust_remote_code,
            **placement(device),
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise InvalidSpecError(MODEL_FIELD, f"cannot load the model: {exc}") from exc
    if trust_remote_code and remote_code(source_dir):
        _register_remote_classes(module, task)
    log.info(
        "loaded the original model",
        extra={"dtype": dtype, "device": device, "deviceMap": _device_summary(module)},
    )
    return TorchInferenceModel(module, task, device)


def _device_summary(module: Any) -> dict[str, int]:
    """Modules per device of a dispatched model (empty when it sits on one device)."""
    placed = getattr(module, "hf_device_map", None) or {}
    summary: dict[str, int] = {}
    for where in placed.values():
        summary[str(where)] = summary.get(str(where), 0) + 1
    return summary


def _register_remote_classes(module: Any, task: Task | str) -> None:
    """Register the model's own (trusted) classes with the Auto classes, so that loading its
    artifacts later in this run resolves them locally instead of asking about remote code."""
    import transformers

    config_class = type(module.config)
    model_type = getattr(config_class, "model_type", "")
    if model_type and model_type not in transformers.CONFIG_MAPPING:
        transformers.AutoConfig.register(model_type, config_class, exist_ok=True)
    auto_class(task).register(config_class, type(module), exist_ok=True)


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


def preload_runtime(
    method: str | None = None, source_dir: Path | None = None, task: Task | str | None = None
) -> None:
    """Import transformers' model machinery, the model's class (when ``source_dir`` and
    ``task`` are given) and ``method``'s library ahead of time.

    The method's libraries are its table entry's ``runtime_modules``: importing them up front
    makes a later peak-memory measurement of quantize() see the model's memory, not one-time
    library imports (~200-400 MB)."""
    import importlib

    import transformers

    for name in ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        getattr(transformers, name)
    importlib.import_module("transformers.modeling_utils")
    importlib.import_module("transformers.quantizers.auto")
    if source_dir is not None and task is not None and not remote_code(source_dir):
        # trust_remote_code is explicit so transformers never prompts on stdin; a model whose
        # classes come with it is left to from_pretrained under spec.model.trustRemoteCode.
        config = transformers.AutoConfig.from_pretrained(str(source_dir), trust_remote_code=False)
        mapping = auto_class(task)._model_mapping
        if type(config) in mapping:
            mapping[type(config)]  # indexing imports the model's module
    if method is None:
        return
    for module in method_spec(method).runtime_modules:
        importlib.import_module(module)


def dir_size(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def freed() -> Iterator[None]:
    """Run a block, then return what it left behind to the allocator."""
    try:
        yield
    finally:
        gc.collect()


__all__ = [
    "MODEL_FIELD",
    "TOKENIZER_FILES",
    "TorchInferenceModel",
    "auto_class",
    "check_remote_code",
    "checkpoint_dtype",
    "copy_tokenizer",
    "detect_task",
    "dir_size",
    "freed",
    "load_artifact",
    "load_original",
    "load_tokenizer",
    "output_tensor",
    "preload_runtime",
    "read_config",
    "weights_size",
]
