"""bitsandbytes through transformers' ``BitsAndBytesConfig``: LLM.int8, NF4 and FP4.

The model is quantized while it loads and saved at once, before any forward pass:
bitsandbytes' CPU backend repacks 4-bit quantization state on the first forward on CPUs
with avx512_bf16, and a checkpoint saved after that is silently corrupt (docs/findings.md). Saving
first keeps the artifact right with or without double quantization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from kubequant_api.constants import Task
from optimizer_job import loading
from optimizer_job.methods._common import (
    finish_artifact,
    library_errors,
    release,
    source_dtype,
    spread,
    timed,
    torch_dtype,
)
from optimizer_job.methods.base import (
    ArtifactInfo,
    InferenceModel,
    QuantizationMethod,
    QuantizeRequest,
    register,
)
from optimizer_job.streamed import load_streamed


class _Bnb(QuantizationMethod):
    load_requires = ("bitsandbytes", "accelerate")

    def _config(self, params: Any) -> Any:
        raise NotImplementedError

    def _quantize(self, request: QuantizeRequest, task: Task) -> ArtifactInfo:
        request.progress(5)
        # Quantized while loading, shard by shard, in the checkpoint's dtype (the layers
        # bitsandbytes leaves alone stay as stored).
        with library_errors(self.name, "quantization"), timed(self.name, "quantize"):
            model = load_streamed(
                task,
                request.source_dir,
                dtype=source_dtype(request),
                quantization_config=self._config(request.params),
                trust_remote_code=request.trust_remote_code,
                **spread(request),
            )
        request.progress(70)
        # No forward pass may run before this save (see the module docstring).
        with library_errors(self.name, "saving"), timed(self.name, "save"):
            model.save_pretrained(str(request.out_dir), safe_serialization=True)
        release(model)
        del model
        return finish_artifact(
            self.name,
            request,
            task,
            "safetensors",
            extra={"library": "bitsandbytes", "savedBeforeForward": True},
        )

    def load(self, artifact_dir: Path, info: ArtifactInfo, device: str = "cpu") -> InferenceModel:
        with library_errors(self.name, "loading the artifact"):
            model = loading.auto_class(info.task).from_pretrained(
                str(artifact_dir), **(loading.placement(device) or {"device_map": "cpu"})
            )
        return loading.TorchInferenceModel(model, info.task, device)


@register
class BnbInt8(_Bnb):
    name = "bnb-int8"

    def _config(self, params: Any) -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_8bit=True, llm_int8_threshold=float(params.threshold)
        )


class _Bnb4Bit(_Bnb):
    quant_type: ClassVar[str]

    def _config(self, params: Any) -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=bool(params.double_quant),
            bnb_4bit_compute_dtype=torch_dtype(str(params.compute_dtype)),
        )


@register
class BnbNf4(_Bnb4Bit):
    name = "bnb-nf4"
    quant_type = "nf4"


@register
class BnbFp4(_Bnb4Bit):
    name = "bnb-fp4"
    quant_type = "fp4"
