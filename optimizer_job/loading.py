"""Transformers models by task, as the methods and the pipeline load and run them.

The lowest layer of the engine's model handling: the Auto class for a task, the tensor
evaluation compares, the inference wrapper around a torch module and the tokenizer files.
The quantization methods import this module (never :mod:`optimizer_job.modeling`, which
looks methods up to load artifacts), so the two never import each other.
"""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Any, Final

from kubequant_api.constants import MODEL_FIELD, TASK_FIELD, Task
from kubequant_api.errors import InvalidSpecError
from optimizer_job.errors import IncompatibleError

log = logging.getLogger(__name__)

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
    "preprocessor_config.json",
    "generation_config.json",
)


# dtype names config.json uses (``dtype``, formerly ``torch_dtype``) and the safetensors header
# names of the floating-point dtypes a checkpoint may be stored in.
FLOAT_DTYPES: Final = ("float32", "bfloat16", "float16")
_SAFETENSORS_FLOATS: Final = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_CONFIG_DTYPES: Final = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}  # fmt: skip
# Host memory kept free for the runtime (Python, libraries, activations) when a model is
# spread over devices and the CPU takes what the GPUs cannot hold.
CPU_RESERVE_BYTES: Final = 2 * 1024**3
GPU_RESERVE_FRACTION: Final = 0.1


def remote_code(model_dir: Path) -> dict[str, Any]:
    """The ``auto_map`` entries of config.json and tokenizer_config.json: classes the model
    maps to code shipped with it."""
    found: dict[str, Any] = {}
    for name in ("config.json", "tokenizer_config.json"):
        path = model_dir / name
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            continue  # read_config reports a broken config.json
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if isinstance(auto_map, dict):
            found.update({f"{name}: {k}": v for k, v in auto_map.items()})
        elif auto_map:
            found[name] = auto_map
    return found


def weights_size(path: Path) -> int:
    """Bytes of the weight files under ``path`` (safetensors, torch, onnx and their data)."""
    suffixes = {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".data"}
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)


# A safetensors header longer than this is not one (the format's own reader caps it too).
SAFETENSORS_HEADER_MAX: Final = 100_000_000


def read_safetensors_header(path: Path) -> tuple[int, dict[str, Any]] | None:
    """(its length, the header) of a safetensors file, read without its tensors; None when
    the first 8 bytes give no plausible length. OSError and ValueError pass through."""
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size < SAFETENSORS_HEADER_MAX:
            return None
        header = json.loads(fh.read(size))
    return (size, header) if isinstance(header, dict) else None


def safetensors_dtypes(model_dir: Path) -> dict[str, int]:
    """Bytes per floating-point dtype over the safetensors shards' headers (read only)."""
    counts: dict[str, int] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        try:
            found = read_safetensors_header(path)
        except (OSError, ValueError):
            continue
        if found is not None:
            add_header_dtypes(found[1], counts)
    return counts


def add_header_dtypes(header: dict[str, Any], counts: dict[str, int]) -> None:
    """Add one safetensors header's floating-point tensors to ``counts`` (dtype -> bytes)."""
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        dtype = _SAFETENSORS_FLOATS.get(str(entry.get("dtype")))
        offsets = entry.get("data_offsets") or [0, 0]
        if dtype is not None and len(offsets) == 2:
            counts[dtype] = counts.get(dtype, 0) + int(offsets[1]) - int(offsets[0])


def dtype_from(config: dict[str, Any], header_dtypes: dict[str, int]) -> str:
    """The checkpoint's dtype: the one holding most bytes in the safetensors headers, else
    config.json's ``dtype`` / ``torch_dtype``, else float32 (a ``.bin`` checkpoint without
    either is loaded as transformers always did)."""
    if header_dtypes:
        return max(header_dtypes.items(), key=lambda kv: kv[1])[0]
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if isinstance(value, str) and value.lower() in _CONFIG_DTYPES:
            return _CONFIG_DTYPES[value.lower()]
    text_config = config.get("text_config")
    if isinstance(text_config, dict):
        return dtype_from(text_config, {})
    return "float32"


def checkpoint_dtype(model_dir: Path) -> str:
    """``float32``, ``bfloat16`` or ``float16``: what the weights in ``model_dir`` are stored
    in, so a model is loaded as stored and never upcast as a whole."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    return dtype_from(config if isinstance(config, dict) else {}, safetensors_dtypes(model_dir))


def torch_dtype_of(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is always there in the engine
        return 0


def max_memory(reserve_fraction: float = GPU_RESERVE_FRACTION) -> dict[int | str, int]:
    """What accelerate may place on each visible GPU (free memory less a reserve for
    activations) and on the host (available memory less CPU_RESERVE_BYTES)."""
    import psutil

    budget: dict[int | str, int] = {}
    if gpu_count():
        import torch

        for index in range(gpu_count()):
            free, _total = torch.cuda.mem_get_info(index)
            budget[index] = int(free * (1 - reserve_fraction))
    budget["cpu"] = max(0, int(psutil.virtual_memory().available) - CPU_RESERVE_BYTES)
    return budget


def placement(device: str) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments placing a model on ``device``: on CUDA every
    visible GPU (``device_map="auto"`` with a per-device budget; layers that do not fit go to
    the host), on CPU nothing (transformers loads on the host)."""
    if device.startswith("cuda") and gpu_count():
        return {"device_map": "auto", "max_memory": max_memory()}
    return {}


def input_device(module: Any, device: str) -> Any:
    """Where a (possibly dispatched) model wants its input ids: its input embeddings'."""
    try:
        return module.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return device


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

    def forward_tensor(self, input_ids: Any, attention_mask: Any) -> Any:
        """The output tensor where the model computed it (its device, its dtype): evaluation
        reduces it there instead of moving full-vocabulary logits to the host."""
        import numpy as np
        import torch

        where = input_device(self.module, self.device)
        ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64), device=where)
        mask = torch.as_tensor(np.asarray(attention_mask, dtype=np.int64), device=where)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self.task == Task.CAUSAL_LM:
            kwargs["use_cache"] = False
        with _grad_context(self.grad_mode):
            return output_tensor(self.task, self.module(**kwargs)).detach()

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        out = self.forward_tensor(input_ids, attention_mask)
        return out.to(device="cpu", dtype=torch.float32).numpy()

    def close(self) -> None:
        self.module = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is always there in the engine
            pass


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
