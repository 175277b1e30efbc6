"""The contract between the engine's pipeline and its quantization methods.

A method turns a local fp32/fp16 model directory into an artifact directory, and loads such
an artifact back as an :class:`InferenceModel` that evaluation can run. The pipeline never
evaluates the in-memory model a method produced: it always reloads the artifact from disk.

Adding a method is one module in this package that subclasses :class:`QuantizationMethod`
and decorates it with :func:`register`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from kubequant_api.constants import ARTIFACT_META_FILE, Task
from kubequant_api.errors import KubequantError
from kubequant_api.models import METHOD_PARAMS, ApiModel


class MethodError(KubequantError):
    """A method failed in a way that retrying may fix (exit code 1)."""


class IncompatibleError(KubequantError):
    """The method cannot handle this model/task (invalid spec: exit code 2)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InferenceModel(Protocol):
    """A loaded model, original or quantized, as evaluation sees it.

    ``forward`` takes a batch of token ids and attention masks (int64 numpy arrays of shape
    [batch, seq]) and returns float32 numpy arrays:
      - causal-lm: logits [batch, seq, vocab]
      - feature-extraction: last hidden states [batch, seq, hidden]
      - sequence-classification: logits [batch, num_labels]
    """

    task: Task

    def forward(self, input_ids: Any, attention_mask: Any) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class QuantizeRequest:
    """Everything a method needs to produce an artifact."""

    source_dir: Path  # a local HF-format model directory (config.json, weights, tokenizer)
    out_dir: Path  # empty directory to write the artifact into
    task: Task  # resolved task (never auto)
    params: ApiModel  # typed params (kubequant_api.models.METHOD_PARAMS[name])
    calibration: Sequence[str] = ()  # calibration texts, for methods that need them
    sequence_length: int = 512
    device: str = "cpu"  # "cpu" or "cuda"
    trust_remote_code: bool = False
    progress: Callable[[int], None] = field(default=lambda _pct: None)  # 0..100 within quantizing


@dataclass
class ArtifactInfo:
    """Written by the pipeline as kubequant-artifact.json in every artifact."""

    method: str
    params: dict[str, Any]
    task: str
    format: str  # e.g. "safetensors", "torch-save", "onnx", "quanto"
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, out_dir: Path) -> None:
        (out_dir / ARTIFACT_META_FILE).write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def read(cls, out_dir: Path) -> ArtifactInfo:
        return cls(**json.loads((out_dir / ARTIFACT_META_FILE).read_text()))


class QuantizationMethod(ABC):
    """One quantization method. Subclasses set the class attributes and implement two calls."""

    name: ClassVar[str]
    supported_tasks: ClassVar[frozenset[Task]]
    needs_calibration: ClassVar[bool] = False
    # "cpu", "cuda" or "any": where quantize() can run.
    device_support: ClassVar[str] = "any"
    # Rough bytes of the artifact per fp32 byte, for dryRun estimates.
    expected_size_ratio: ClassVar[float] = 0.5

    @abstractmethod
    def quantize(self, request: QuantizeRequest) -> ArtifactInfo:
        """Quantize ``request.source_dir`` and write the artifact into ``request.out_dir``.

        Returns the ArtifactInfo (the pipeline writes it next to the files).
        Raises IncompatibleError for model/task/params that cannot work, MethodError otherwise.
        """

    @abstractmethod
    def load(self, artifact_dir: Path, info: ArtifactInfo, device: str = "cpu") -> InferenceModel:
        """Load an artifact written by :meth:`quantize` for evaluation."""

    @classmethod
    def params_model(cls) -> type[ApiModel]:
        return METHOD_PARAMS[cls.name]


_REGISTRY: dict[str, type[QuantizationMethod]] = {}


def register(cls: type[QuantizationMethod]) -> type[QuantizationMethod]:
    if cls.name not in METHOD_PARAMS:
        raise KubequantError(f"method {cls.name!r} is not in the API's method table")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[QuantizationMethod]]:
    """All registered methods (importing optimizer_job.methods registers them)."""
    return dict(_REGISTRY)


def get_method(name: str) -> QuantizationMethod:
    from optimizer_job import methods  # noqa: F401  (registers every module)

    try:
        return _REGISTRY[name]()
    except KeyError as exc:
        raise IncompatibleError(
            "spec.method", f"method {name!r} is not available in this engine"
        ) from exc
