"""The model card's loading snippets: valid Python, ``path`` first, the names they promise.

That each snippet really loads its artifact and reproduces the original's outputs is
tests/unit/optimizer_job/methods/test_ecosystem_loading.py (it runs them in a fresh
interpreter)."""

from __future__ import annotations

import ast

import pytest

from kubequant_api.constants import Task
from kubequant_api.methods import method_names, method_spec
from optimizer_job.errors import IncompatibleError
from optimizer_job.methods.base import get_method
from optimizer_job.snippets import load_snippet

CASES = [
    (method, task)
    for method in method_names()
    for task in sorted(method_spec(method).supported_tasks)
]


def _assigned(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
    return names


@pytest.mark.parametrize(("method", "task"), CASES)
def test_snippet_is_python_with_path_first_and_defines_its_names(method: str, task: Task) -> None:
    source = load_snippet(method, str(task), "/models/out dir")
    first = source.splitlines()[0]
    assert first == 'path = "/models/out dir"'
    tree = ast.parse(source)
    names = _assigned(tree)
    assert "tokenizer" in names
    wanted = "session" if get_method(method).loader == "onnx" else "model"
    assert wanted in names, source
    assert "from_pretrained(path)" in source or "snapshot_download(path)" in source


def test_each_loader_uses_its_own_library() -> None:
    assert "from optimum.quanto import QuantizedModelForCausalLM" in load_snippet(
        "quanto-int8", "causal-lm", "x"
    )
    quanto_encoder = load_snippet("quanto-int4", "feature-extraction", "x")
    assert "auto_class = AutoModel\n" in quanto_encoder and "torch.no_grad()" in quanto_encoder
    assert "onnxruntime.InferenceSession(" in load_snippet("onnx-int8", "feature-extraction", "x")
    gptq = load_snippet("gptq", "causal-lm", "x")
    assert "AutoModelForCausalLM.from_pretrained(path)" in gptq and "compressed-tensors" in gptq
    bnb = load_snippet("bnb-nf4", "sequence-classification", "x")
    assert "AutoModelForSequenceClassification.from_pretrained(path)" in bnb
    assert "bitsandbytes" in bnb


def test_path_is_a_python_string_literal_whatever_it_holds() -> None:
    odd = 'C:\\models\\"quoted" dir'
    namespace: dict[str, object] = {}
    exec(load_snippet("bnb-int8", "feature-extraction", odd).splitlines()[0], namespace)
    assert namespace["path"] == odd


def test_unknown_method_and_task_are_refused() -> None:
    with pytest.raises(IncompatibleError):
        load_snippet("no-such-method", "causal-lm", "x")
    with pytest.raises(ValueError):
        load_snippet("bnb-int8", "auto", "x")
