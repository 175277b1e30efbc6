"""ONNX export (torch.onnx, dynamo) plus ONNX Runtime dynamic int8 quantization, for CPU serving.

The fp32 graph is exported with dynamic batch and sequence axes, then
``onnxruntime.quantization.quantize_dynamic`` stores int8 weights (per output channel by
default) and quantizes activations on the fly. The artifact is ``model.onnx`` (plus
``model.onnx.data`` for models over the 2 GB protobuf limit) and runs with an ONNX Runtime
``InferenceSession`` on the CPU execution provider.

The folder follows the layout optimum's ONNX Runtime classes (``ORTModelForFeatureExtraction``,
``ORTModelForCausalLM``) read: ``model.onnx`` at the top level beside ``config.json`` and the
tokenizer files. Inputs and outputs are named as optimum's exporters name them:
``input_ids``, ``attention_mask`` (and ``token_type_ids`` for models whose forward takes
them, BERT-like encoders) in, ``last_hidden_state`` (feature extraction) or ``logits`` out.
The causal-LM graph has no KV cache inputs (optimum: ``use_cache=False``).
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from typing import Any

from kubequant_api.constants import Task
from optimizer_job import loading
from optimizer_job.methods._common import (
    finish_artifact,
    library_errors,
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

ONNX_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")
TOKEN_TYPE_IDS = "token_type_ids"  # noqa: S105  (an input name, not a secret)
OUTPUT_NAMES = {
    Task.CAUSAL_LM: "logits",
    Task.FEATURE_EXTRACTION: "last_hidden_state",
    Task.SEQUENCE_CLASSIFICATION: "logits",
}
# Models whose fp32 weights pass this size keep their weights in an external data file.
EXTERNAL_DATA_BYTES = 1_800_000_000


def input_names(model: Any) -> tuple[str, ...]:
    """The graph's inputs: ``token_type_ids`` too when the model's forward takes it."""
    takes = inspect.signature(model.forward).parameters
    return (*INPUT_NAMES, TOKEN_TYPE_IDS) if TOKEN_TYPE_IDS in takes else INPUT_NAMES


def _export_module(model: Any, task: Task, with_token_types: bool) -> Any:
    import torch

    def run(**kwargs: Any) -> torch.Tensor:
        if task == Task.CAUSAL_LM:
            kwargs["use_cache"] = False
        out: torch.Tensor = loading.output_tensor(task, model(**kwargs))
        return out

    class ExportWrapper(torch.nn.Module):
        """One tensor out, no KV cache: the graph evaluation and serving run."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return run(input_ids=input_ids, attention_mask=attention_mask)

    class TokenTypesExportWrapper(ExportWrapper):
        def forward(  # type: ignore[override]
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            return run(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )

    return (TokenTypesExportWrapper() if with_token_types else ExportWrapper()).eval()


class OnnxInferenceModel:
    """An ``InferenceModel`` over an ONNX Runtime session."""

    def __init__(self, path: Path, task: Task | str) -> None:
        import onnxruntime as ort

        self.task = Task(task)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session: Any = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        import numpy as np

        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            TOKEN_TYPE_IDS: np.zeros_like(ids),
        }
        out = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})
        return np.asarray(out[0], dtype=np.float32)

    def close(self) -> None:
        self.session = None


@register
class OnnxInt8(QuantizationMethod):
    name = "onnx-int8"
    loader = "onnx"

    def _quantize(self, request: QuantizeRequest, task: Task) -> ArtifactInfo:
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic

        per_channel = bool(getattr(request.params, "per_channel", True))
        request.progress(5)
        # The one method that upcasts a bf16/fp16 checkpoint, as a whole: ONNX Runtime's
        # quantize_dynamic quantizes fp32 initializers only, and the graph is exported from
        # the module as loaded (docs/findings.md).
        with library_errors(self.name, "loading the model"):
            model = loading.auto_class(task).from_pretrained(
                str(request.source_dir),
                dtype=torch.float32,
                trust_remote_code=request.trust_remote_code,
            )
        fp32_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        names = input_names(model)
        model.config.save_pretrained(str(request.out_dir))  # optimum's ORTModel* read it
        external = fp32_bytes > EXTERNAL_DATA_BYTES
        staging = request.out_dir / ".fp32-export"
        staging.mkdir(parents=True, exist_ok=True)
        exported = staging / ONNX_FILE
        ids = torch.ones((2, 16), dtype=torch.long)
        mask = torch.ones((2, 16), dtype=torch.long)
        mask[1, 12:] = 0
        batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2)
        inputs = (ids, mask, torch.zeros_like(ids))[: len(names)]
        request.progress(10)
        try:
            with library_errors(self.name, "ONNX export"), timed(self.name, "export"):
                program = torch.onnx.export(
                    _export_module(model, task, TOKEN_TYPE_IDS in names),
                    inputs,
                    dynamo=True,
                    input_names=list(names),
                    output_names=[OUTPUT_NAMES[task]],
                    dynamic_shapes={name: {0: batch, 1: seq} for name in names},
                    optimize=True,
                )
                if program is None:
                    raise MethodError(f"{self.name}: torch.onnx.export returned no program")
                release(model)
                del model
                program.save(str(exported), external_data=external)
                del program
            request.progress(60)
            with library_errors(self.name, "int8 quantization"), timed(self.name, "quantize"):
                quantize_dynamic(
                    exported,
                    request.out_dir / ONNX_FILE,
                    per_channel=per_channel,
                    weight_type=QuantType.QInt8,
                    use_external_data_format=external,
                )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return finish_artifact(
            self.name,
            request,
            task,
            "onnx",
            extra={
                "inputs": list(names),
                "output": OUTPUT_NAMES[task],
                "fp32WeightBytes": fp32_bytes,
                "externalData": external,
            },
        )

    def load(self, artifact_dir: Path, info: ArtifactInfo, device: str = "cpu") -> InferenceModel:
        with library_errors(self.name, "loading the artifact"):
            return OnnxInferenceModel(artifact_dir / ONNX_FILE, info.task)
