"""PyTorch-native quantization with torchao: int8 weight-only, int8 dynamic, int4 weight-only.

int8 goes through transformers' ``TorchAoConfig``: the checkpoint is quantized while it is
loaded (one tensor at a time, so peak memory stays near the fp32 size), saved as safetensors
and reloaded with plain ``from_pretrained``.

int4 has no CPU path in ``Int4WeightOnlyConfig`` (CUDA kernels only). On CPU the artifact
uses ``PrototypeInt4WeightOnlyConfig`` (the ``Int4OpaqueTensor`` CPU kernel) on a bf16 model;
transformers refuses to save it, so the state dict is written with ``torch.save`` and
loaded back with ``weights_only=True`` into an uninitialised skeleton of the same config.
On CUDA it uses ``Int4WeightOnlyConfig`` (tinygemm tile-packed layout) the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubequant_api.constants import Task
from optimizer_job import loading
from optimizer_job.methods._common import (
    device_map,
    finish_artifact,
    library_errors,
    log,
    release,
    timed,
)
from optimizer_job.methods.base import (
    ArtifactInfo,
    InferenceModel,
    MethodError,
    QuantizationMethod,
    QuantizeRequest,
    register,
)

INT4_WEIGHTS_FILE = "model-int4.pt"


class _TorchaoInt8(QuantizationMethod):
    load_requires = ("torchao",)

    def _config(self) -> Any:
        raise NotImplementedError

    def _quantize(self, request: QuantizeRequest, task: Task) -> ArtifactInfo:
        import torch
        from transformers import TorchAoConfig

        request.progress(5)
        with library_errors(self.name, "quantization"), timed(self.name, "quantize"):
            model = loading.auto_class(task).from_pretrained(
                str(request.source_dir),
                dtype=torch.float32,
                quantization_config=TorchAoConfig(self._config()),
                device_map=device_map(request),
                trust_remote_code=request.trust_remote_code,
            )
        request.progress(70)
        with library_errors(self.name, "saving"), timed(self.name, "save"):
            model.save_pretrained(str(request.out_dir), safe_serialization=True)
        release(model)
        del model
        return finish_artifact(self.name, request, task, "safetensors")

    def load(self, artifact_dir: Path, info: ArtifactInfo, device: str = "cpu") -> InferenceModel:
        with library_errors(self.name, "loading the artifact"):
            model = loading.auto_class(info.task).from_pretrained(
                str(artifact_dir), device_map="cuda:0" if device.startswith("cuda") else "cpu"
            )
        return loading.TorchInferenceModel(model, info.task, device)


@register
class TorchaoInt8Weight(_TorchaoInt8):
    name = "torchao-int8-weight"

    def _config(self) -> Any:
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()


@register
class TorchaoInt8Dynamic(_TorchaoInt8):
    name = "torchao-int8-dynamic"

    def _config(self) -> Any:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig()


def _int4_config(device: str, group_size: int) -> Any:
    if device.startswith("cuda"):
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=group_size)


@register
class TorchaoInt4Weight(QuantizationMethod):
    name = "torchao-int4-weight"
    load_requires = ("torchao",)

    def _quantize(self, request: QuantizeRequest, task: Task) -> ArtifactInfo:
        import torch
        from torchao.quantization import quantize_

        group_size = int(getattr(request.params, "group_size", 128))
        request.progress(5)
        with library_errors(self.name, "loading the model"):
            model = loading.auto_class(task).from_pretrained(
                str(request.source_dir),
                dtype=torch.bfloat16,
                device_map=device_map(request),
                trust_remote_code=request.trust_remote_code,
            )
        output_embeddings = model.get_output_embeddings()
        skipped: list[str] = []

        def eligible(module: torch.nn.Module, fqn: str) -> bool:
            if not isinstance(module, torch.nn.Linear) or module is output_embeddings:
                return False
            if module.in_features % group_size:
                skipped.append(fqn)
                return False
            return True

        request.progress(30)
        with library_errors(self.name, "quantization"), timed(self.name, "quantize"):
            quantize_(model, _int4_config(request.device, group_size), filter_fn=eligible)
        if skipped:
            log.info(
                "layers left in bf16 (in_features not divisible by groupSize %d): %s",
                group_size,
                ", ".join(skipped),
                extra={"method": self.name},
            )
        request.progress(70)
        with library_errors(self.name, "saving"), timed(self.name, "save"):
            torch.save(model.state_dict(), request.out_dir / INT4_WEIGHTS_FILE)
            model.config.save_pretrained(str(request.out_dir))
        release(model)
        del model
        return finish_artifact(
            self.name,
            request,
            task,
            "torch-save",
            extra={
                "device": "cuda" if request.device.startswith("cuda") else "cpu",
                "config": type(_int4_config(request.device, group_size)).__name__,
                "computeDtype": "bfloat16",
                "unquantizedLayers": skipped,
            },
        )

    def load(self, artifact_dir: Path, info: ArtifactInfo, device: str = "cpu") -> InferenceModel:
        import torch
        import torchao  # noqa: F401  (registers its tensor subclasses as safe globals)
        from transformers import AutoConfig
        from transformers.initialization import no_init_weights

        made_on = str(info.extra.get("device", "cpu"))
        wanted = "cuda" if device.startswith("cuda") else "cpu"
        if made_on != wanted:
            raise MethodError(
                f"{self.name}: this artifact holds {made_on} int4 kernels' layout and cannot "
                f"run on {wanted}"
            )
        with library_errors(self.name, "loading the artifact"):
            config = AutoConfig.from_pretrained(str(artifact_dir))
            with no_init_weights():
                model = loading.auto_class(info.task).from_config(config, dtype=torch.bfloat16)
            state = torch.load(
                artifact_dir / INT4_WEIGHTS_FILE,
                map_location="cuda:0" if wanted == "cuda" else "cpu",
                weights_only=True,
            )
            model.load_state_dict(state, assign=True, strict=True)
            del state
            model.to("cuda:0" if wanted == "cuda" else "cpu")
        return loading.TorchInferenceModel(model, info.task, device)
