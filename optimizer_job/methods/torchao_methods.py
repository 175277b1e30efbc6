"""PyTorch-native quantization with torchao: int8 weight-only, int8 dynamic, int4 weight-only.

Every artifact goes through transformers' ``TorchAoConfig``: the checkpoint is quantized while
it is loaded (one tensor at a time, so peak memory stays near the original size), saved with
``save_pretrained`` as safetensors and reloaded with plain ``AutoModel*.from_pretrained``.

int4 runs on CUDA only (the method table's ``device_support``): ``Int4WeightOnlyConfig``'s
tile-packed layout is a CUDA kernel's and torchao serializes it; on CPU, torchao 0.18's only
int4 weight-only kernel (``PrototypeInt4WeightOnlyConfig``, ``Int4OpaqueTensor``) quantizes
but ``save_pretrained`` refuses it ("Unsupported tensor type"), ``Int4WeightOnlyConfig`` with
the ``opaque`` packing format is refused, and the plain format needs the ``mslk`` CUDA
kernels (docs/findings.md). A CPU int4 artifact would be a ``torch.save`` nothing but
kubequant loads, so the method is refused on CPU at preflight instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from kubequant_api.constants import Task
from optimizer_job import loading
from optimizer_job.methods._common import (
    finish_artifact,
    library_errors,
    log,
    release,
    source_dtype,
    spread,
    timed,
    torch_dtype,
)
from optimizer_job.methods.base import (
    ArtifactInfo,
    InferenceModel,
    MethodError,
    QuantizationMethod,
    QuantizeRequest,
    register,
)
from optimizer_job.streamed import load_streamed


class _TorchaoSafetensors(QuantizationMethod):
    """Quantize while loading through ``TorchAoConfig``, save with ``save_pretrained``."""

    load_requires = ("torchao",)
    # None: the checkpoint's own dtype (layers left unquantized stay as stored).
    dtype: ClassVar[str | None] = None

    def _config(self, request: QuantizeRequest) -> Any:
        raise NotImplementedError

    def _not_converted(self, request: QuantizeRequest, task: Task) -> list[str] | None:
        """Modules left unquantized; None: transformers' default (the output embeddings)."""
        return None

    def _extra(self, request: QuantizeRequest) -> dict[str, Any]:
        return {}

    def _quantize(self, request: QuantizeRequest, task: Task) -> ArtifactInfo:
        from transformers import TorchAoConfig

        request.progress(5)
        config = TorchAoConfig(
            self._config(request), modules_to_not_convert=self._not_converted(request, task)
        )
        with library_errors(self.name, "quantization"), timed(self.name, "quantize"):
            model = load_streamed(
                task,
                request.source_dir,
                dtype=torch_dtype(self.dtype) if self.dtype else source_dtype(request),
                quantization_config=config,
                trust_remote_code=request.trust_remote_code,
                **spread(request),
            )
        request.progress(70)
        with library_errors(self.name, "saving"), timed(self.name, "save"):
            model.save_pretrained(str(request.out_dir), safe_serialization=True)
        release(model)
        del model
        return finish_artifact(self.name, request, task, "safetensors", self._extra(request))

    def load(self, artifact_dir: Path, info: ArtifactInfo, device: str = "cpu") -> InferenceModel:
        made_on = str(info.extra.get("device", "any"))
        wanted = "cuda" if device.startswith("cuda") else "cpu"
        if made_on not in ("any", wanted):
            raise MethodError(
                f"{self.name}: this artifact holds the {made_on} kernels' layout and cannot "
                f"run on {wanted}"
            )
        with library_errors(self.name, "loading the artifact"):
            model = loading.auto_class(info.task).from_pretrained(
                str(artifact_dir), **(loading.placement(wanted) or {"device_map": "cpu"})
            )
        return loading.TorchInferenceModel(model, info.task, device)


@register
class TorchaoInt8Weight(_TorchaoSafetensors):
    name = "torchao-int8-weight"

    def _config(self, request: QuantizeRequest) -> Any:
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()


@register
class TorchaoInt8Dynamic(_TorchaoSafetensors):
    name = "torchao-int8-dynamic"

    def _config(self, request: QuantizeRequest) -> Any:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig()


def _group_size(request: QuantizeRequest) -> int:
    return int(getattr(request.params, "group_size", 128))


@register
class TorchaoInt4Weight(_TorchaoSafetensors):
    """CUDA only (see the module docstring): tinygemm's tile-packed int4 on a bf16 model."""

    name = "torchao-int4-weight"
    dtype = "bfloat16"

    def _config(self, request: QuantizeRequest) -> Any:
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(
            group_size=_group_size(request), int4_packing_format="tile_packed_to_4d"
        )

    def _not_converted(self, request: QuantizeRequest, task: Task) -> list[str] | None:
        """The output embeddings and every Linear whose in_features the group size does not
        divide (read from a weightless skeleton of the model)."""
        import torch
        from transformers import AutoConfig

        group_size = _group_size(request)
        config = AutoConfig.from_pretrained(
            str(request.source_dir), trust_remote_code=request.trust_remote_code
        )
        with torch.device("meta"):
            skeleton = loading.auto_class(task).from_config(
                config, trust_remote_code=request.trust_remote_code
            )
        head = skeleton.get_output_embeddings()
        linears = [
            (fqn, m) for fqn, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)
        ]
        heads = [fqn for fqn, m in linears if m is head]
        skipped = [fqn for fqn, m in linears if m is not head and m.in_features % group_size]
        if skipped:
            log.info(
                "layers left in bf16 (in_features not divisible by groupSize %d): %s",
                group_size,
                ", ".join(skipped),
                extra={"method": self.name},
            )
        return heads + skipped

    def _extra(self, request: QuantizeRequest) -> dict[str, Any]:
        return {
            "device": "cuda",
            "config": "Int4WeightOnlyConfig",
            "packingFormat": "tile_packed_to_4d",
            "computeDtype": "bfloat16",
        }
