"""optimum-quanto weight quantization (int8, int4) with quanto's own save and reload.

transformers' ``QuantoConfig`` refuses to save, so the artifact is written with quanto's
``QuantizedTransformersModel`` (safetensors plus ``quanto_qmap.json``) and reloaded by the
same class, which re-creates the quantized modules from the map (docs/findings.md: exact). int4
kernels refuse inference tensors, so those artifacts run under ``torch.no_grad``.

transformers 5 cannot load such a folder: plain ``AutoModel*.from_pretrained`` accepts it,
ignores every packed weight and initialises those layers at random, and a
``quantization_config`` with ``quant_method: "quanto"`` loads it just as wrongly
(docs/findings.md). So config.json gets a ``quantization_config`` that names quanto, its map
and its loader but no ``quant_method``: transformers then refuses the folder with an error
instead of loading garbage, and quanto's class (which only reads the config) loads it.

qint4 models run quanto's native ``unpack`` kernel (a C++ extension on CPU) in every forward
pass. It is built before any run (``python -m optimizer_job.prebuild``, the image build and
``make install``): a qint4 quantize or load first loads it with
:func:`optimizer_job.native_extensions.ensure_for_device`, which fails at once with a named error
when it is missing or a stale build lock is left, instead of compiling or waiting forever.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Final

from kubequant_api.constants import Task
from optimizer_job import loading, native_extensions
from optimizer_job.alignment import align_safetensors
from optimizer_job.methods._common import (
    device_map,
    finish_artifact,
    library_errors,
    release,
    source_dtype,
    timed,
)
from optimizer_job.methods.base import (
    ArtifactInfo,
    InferenceModel,
    QuantizationMethod,
    QuantizeRequest,
    register,
)

QMAP_FILE: Final = "quanto_qmap.json"


def _loader_name(task: Task | str) -> str:
    if Task(task) == Task.CAUSAL_LM:
        return "optimum.quanto.QuantizedModelForCausalLM.from_pretrained"
    auto = loading.auto_class(task).__name__
    return f"optimum.quanto.QuantizedTransformersModel subclass with auto_class = {auto}"


def refuse_plain_loading(out_dir: Path, weights: str, task: Task | str) -> dict[str, Any]:
    """Describe quanto's format in config.json so that transformers refuses the folder.

    The ``quantization_config`` written has no ``quant_method``: transformers raises
    ValueError on it (rather than loading the model with random weights), quanto's loader
    does not read it. Returns what was written."""
    path = out_dir / "config.json"
    config = json.loads(path.read_text())
    described = {
        "quant_library": "optimum-quanto",
        "weights": weights,
        "quantization_map": QMAP_FILE,
        "loader": _loader_name(task),
    }
    config["quantization_config"] = described
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return described


def _wrapper_class(task: Task | str) -> Any:
    """quanto's reload class for ``task`` (quanto ships only the causal-LM one)."""
    from optimum.quanto import QuantizedModelForCausalLM, QuantizedTransformersModel

    if Task(task) == Task.CAUSAL_LM:
        return QuantizedModelForCausalLM
    auto = loading.auto_class(task)
    return type(
        f"QuantizedModelFor{auto.__name__.removeprefix('AutoModel') or 'FeatureExtraction'}",
        (QuantizedTransformersModel,),
        {"auto_class": auto},
    )


class _Quanto(QuantizationMethod):
    loader = "quanto"
    load_requires = ("accelerate",)
    weights: ClassVar[str]
    grad_mode: ClassVar[str] = "inference"
    # qint4 (packed) weights are unpacked by quanto's native kernel in each forward pass.
    native_kernels: ClassVar[bool] = False

    def _native_kernels(self, device: str) -> None:
        """Load the prebuilt extensions (fails fast, never compiles); before any model work."""
        if self.native_kernels:
            native_extensions.ensure_for_device(device)

    def _quantize(self, request: QuantizeRequest, task: Task) -> ArtifactInfo:
        self._native_kernels(device_map(request))
        request.progress(5)
        with library_errors(self.name, "loading the model"):
            model = loading.auto_class(task).from_pretrained(
                str(request.source_dir),
                dtype=source_dtype(request),
                device_map=device_map(request),
                trust_remote_code=request.trust_remote_code,
            )
        head = model.get_output_embeddings()
        exclude = [
            name for name, module in model.named_modules() if head is not None and module is head
        ]
        request.progress(30)
        with library_errors(self.name, "quantization"), timed(self.name, "quantize"):
            wrapped = _wrapper_class(task).quantize(
                model, weights=self.weights, exclude=exclude or None
            )
        request.progress(70)
        with library_errors(self.name, "saving"), timed(self.name, "save"):
            wrapped.save_pretrained(str(request.out_dir))
            # quanto's loader maps the file: its int8 matmul on CPU segfaults on a weight
            # that is not 16-byte aligned (optimizer_job/alignment.py)
            for shard in sorted(request.out_dir.glob("*.safetensors")):
                align_safetensors(shard)
            refuse_plain_loading(request.out_dir, self.weights, task)
        release(model, wrapped)
        del model, wrapped
        return finish_artifact(
            self.name, request, task, "quanto", extra={"weights": self.weights, "excluded": exclude}
        )

    def load(self, artifact_dir: Path, info: ArtifactInfo, device: str = "cpu") -> InferenceModel:
        self._native_kernels(device)
        with library_errors(self.name, "loading the artifact"):
            wrapped = _wrapper_class(info.task).from_pretrained(str(artifact_dir))
            model = wrapped._wrapped.to("cuda:0" if device.startswith("cuda") else "cpu")
        return loading.TorchInferenceModel(model, info.task, device, grad_mode=self.grad_mode)


@register
class QuantoInt8(_Quanto):
    name = "quanto-int8"
    weights = "qint8"


@register
class QuantoInt4(_Quanto):
    name = "quanto-int4"
    weights = "qint4"
    grad_mode = "no_grad"
    native_kernels = True
