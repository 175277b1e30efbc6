"""Transformers models by task, as the methods and the pipeline load and run them.

The lowest layer of the engine's model handling: the Auto class for a task, the tensor
evaluation compares, the inference wrapper around a torch module and the tokenizer files.
The quantization methods import this module (never :mod:`optimizer_job.modeling`, which
looks methods up to load artifacts), so the two never import each other.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from kubequant_api.constants import MODEL_FIELD, TASK_FIELD, Task
from kubequant_api.errors import InvalidSpecError
from optimizer_job.errors import IncompatibleError

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
