"""The Python a user runs to load an artifact outside kubequant (the model card's "How to load").

:func:`load_snippet` returns source whose first line is ``path = "<path>"`` and which
defines ``tokenizer`` and either ``model`` (a torch model, called like the transformers
model) or, for ONNX artifacts, ``session`` (an ``onnxruntime.InferenceSession``). Which
loader an artifact needs is its method's ``loader`` (see
:class:`optimizer_job.methods.base.QuantizationMethod`); the method tests run these snippets
literally in a fresh interpreter and compare the outputs with the original model's.
"""

from __future__ import annotations

import json
from typing import Final

from kubequant_api.constants import Task
from optimizer_job.methods.base import get_method

# The transformers Auto class a user loads each task with.
AUTO_CLASSES: Final = {
    Task.CAUSAL_LM: "AutoModelForCausalLM",
    Task.FEATURE_EXTRACTION: "AutoModel",
    Task.SEQUENCE_CLASSIFICATION: "AutoModelForSequenceClassification",
}
# The output an ONNX artifact's graph names, per task (as optimum's exporters name it).
ONNX_OUTPUTS: Final = {
    Task.CAUSAL_LM: "logits",
    Task.FEATURE_EXTRACTION: "last_hidden_state",
    Task.SEQUENCE_CLASSIFICATION: "logits",
}
# optimum's ONNX Runtime class that reads the same folder, per task.
ORT_CLASSES: Final = {
    Task.CAUSAL_LM: "ORTModelForCausalLM.from_pretrained(path, use_cache=False)",
    Task.FEATURE_EXTRACTION: "ORTModelForFeatureExtraction.from_pretrained(path)",
    Task.SEQUENCE_CLASSIFICATION: "ORTModelForSequenceClassification.from_pretrained(path)",
}
PATH_COMMENT: Final = "# a local copy of the artifact, or its Hugging Face Hub repo id"


def _pip(packages: tuple[str, ...]) -> str:
    return "# pip install " + " ".join(dict.fromkeys(packages))


def _transformers(task: Task, requires: tuple[str, ...]) -> list[str]:
    auto = AUTO_CLASSES[task]
    return [
        _pip(("transformers", "torch", *requires)),
        f"from transformers import {auto}, AutoTokenizer",
        "",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        f"model = {auto}.from_pretrained(path)",
    ]


def _quanto(task: Task, requires: tuple[str, ...], no_grad: bool) -> list[str]:
    lines = [
        _pip(("optimum-quanto", "transformers", "torch", *requires)),
        "# The weights are optimum-quanto's packed tensors: transformers' from_pretrained",
        "# refuses this folder; quanto's class rebuilds the layers from quanto_qmap.json.",
    ]
    if task == Task.CAUSAL_LM:
        lines += [
            "from optimum.quanto import QuantizedModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            "tokenizer = AutoTokenizer.from_pretrained(path)",
            "model = QuantizedModelForCausalLM.from_pretrained(path)",
        ]
    else:
        auto = AUTO_CLASSES[task]
        lines += [
            "from optimum.quanto import QuantizedTransformersModel",
            f"from transformers import {auto}, AutoTokenizer",
            "",
            "",
            "class QuantizedModel(QuantizedTransformersModel):",
            f"    auto_class = {auto}",
            "",
            "",
            "tokenizer = AutoTokenizer.from_pretrained(path)",
            "model = QuantizedModel.from_pretrained(path)",
        ]
    lines.append("# model(...) and model.<attribute> reach the transformers model inside.")
    if no_grad:
        lines.append(
            "# Run it under torch.no_grad(): quanto's int4 kernels refuse torch.inference_mode()."
        )
    return lines


def _onnx(task: Task, requires: tuple[str, ...]) -> list[str]:
    return [
        _pip(("onnxruntime", "transformers", "huggingface_hub", *requires)),
        "import os",
        "",
        "import onnxruntime",
        "from huggingface_hub import snapshot_download",
        "from transformers import AutoTokenizer",
        "",
        "folder = path if os.path.isdir(path) else snapshot_download(path)",
        "tokenizer = AutoTokenizer.from_pretrained(folder)",
        "session = onnxruntime.InferenceSession(",
        '    os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"]',
        ")",
        "# Inputs (int64): input_ids, attention_mask, and token_type_ids for BERT-like encoders",
        f"# (see session.get_inputs()); output: {ONNX_OUTPUTS[task]}. No KV cache.",
        f"# optimum's {ORT_CLASSES[task]} reads the same folder.",
    ]


def load_snippet(method: str, task: str, path: str) -> str:
    """Python source that loads the ``method`` artifact for ``task`` found at ``path``.

    The first line is ``path = "<path>"``; the code defines ``tokenizer`` and ``model`` (or
    ``session`` for ONNX). Raises IncompatibleError for a method this engine does not know
    and ValueError for a task that is not a concrete one.
    """
    impl = get_method(method)
    resolved = Task(task)
    if resolved not in AUTO_CLASSES:
        raise ValueError(f"no loading snippet for task {task!r}")
    requires = tuple(impl.load_requires)
    if impl.loader == "quanto":
        body = _quanto(resolved, requires, no_grad=getattr(impl, "grad_mode", "") == "no_grad")
    elif impl.loader == "onnx":
        body = _onnx(resolved, requires)
    else:
        body = _transformers(resolved, requires)
    return "\n".join([f"path = {json.dumps(path, ensure_ascii=False)}", PATH_COMMENT, *body]) + "\n"


__all__ = ["AUTO_CLASSES", "ONNX_OUTPUTS", "load_snippet"]
