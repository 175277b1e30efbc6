"""The contract between the engine's pipeline and its quantization methods.

A method turns a local fp32/fp16 model directory into an artifact directory, and loads such
an artifact back as an :class:`InferenceModel` that evaluation can run. The pipeline never
evaluates the in-memory model a method produced: it always reloads the artifact from disk.

A method's facts (its params, tasks, calibration, device, estimates, libraries) are its entry
in the method table, :mod:`kubequant_api.methods`; the class here holds only behaviour:
``_quantize`` and ``load``. Adding a method is one table entry naming its engine module, and
that module: a subclass of :class:`QuantizationMethod` decorated with :func:`register`.
Methods are looked up by name (:func:`get_method`), importing the module the table names.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from kubequant_api.base import ApiModel
from kubequant_api.constants import ARTIFACT_META_FILE, TASK_FIELD, Task
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.methods import (
    DeviceSupport,
    MethodSpec,
    incompatibility,
    method_names,
    method_spec,
)
from optimizer_job.errors import IncompatibleError, MethodError

T = TypeVar("T")

# How a user loads an artifact outside kubequant (optimizer_job.snippets writes the code):
# "transformers": AutoModel*.from_pretrained(dir); "quanto": optimum-quanto's own wrapper
# class (plain from_pretrained refuses the folder); "onnx": an ONNX Runtime InferenceSession.
Loader = Literal["transformers", "quanto", "onnx"]


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
    params: ApiModel  # typed params (the method table's params model for this method)
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


class _Fact(Generic[T]):
    """One fact of a method's table entry, read through its class or an instance."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, obj: object, owner: type[QuantizationMethod]) -> T:
        value: T = getattr(owner.spec(), self.key)
        return value


class QuantizationMethod(ABC):
    """One quantization method's behaviour; its facts come from its method table entry."""

    name: ClassVar[str]
    # How the artifact loads outside kubequant, and the packages that needs besides
    # transformers and torch (the model card's "How to load" snippet).
    loader: ClassVar[Loader] = "transformers"
    load_requires: ClassVar[tuple[str, ...]] = ()
    supported_tasks: _Fact[frozenset[Task]] = _Fact("supported_tasks")
    needs_calibration: _Fact[bool] = _Fact("needs_calibration")
    device_support: _Fact[DeviceSupport] = _Fact("device_support")
    expected_size_ratio: _Fact[float] = _Fact("expected_size_ratio")

    @classmethod
    def spec(cls) -> MethodSpec:
        """This method's entry in the method table."""
        return method_spec(cls.name)

    @classmethod
    def params_model(cls) -> type[ApiModel]:
        return cls.spec().params

    def quantize(self, request: QuantizeRequest) -> ArtifactInfo:
        """Quantize ``request.source_dir`` and write the artifact into ``request.out_dir``.

        Refuses a task the method does not support (the one compatibility check of
        :mod:`kubequant_api.methods`) and a device it cannot use before touching anything.
        Returns the ArtifactInfo (the pipeline writes it next to the files).
        Raises IncompatibleError for model/task/params that cannot work, MethodError otherwise.
        """
        problem = incompatibility(self.name, request.task, TASK_FIELD)
        if problem is not None:
            raise IncompatibleError(problem.field, problem.message)
        check_device(self.name, self.device_support, request.device)
        return self._quantize(request, Task(request.task))

    @abstractmethod
    def _quantize(self, request: QuantizeRequest, task: Task) -> ArtifactInfo:
        """The method's own work, for a task it supports on a device it can use."""

    @abstractmethod
    def load(self, artifact_dir: Path, info: ArtifactInfo, device: str = "cpu") -> InferenceModel:
        """Load an artifact written by :meth:`quantize` for evaluation."""


def check_device(name: str, support: DeviceSupport, device: str) -> None:
    """IncompatibleError when ``device`` cannot run this method, or CUDA is not there.

    CPU-only methods (``support == "cpu"``) run on the CPU whatever device was offered.
    """
    kind = device.split(":", 1)[0]
    if support == "cpu":
        return
    if support == "cuda" and kind != "cuda":
        raise IncompatibleError(
            "spec.resources.gpu", f"method {name} runs on {support} only, not on {kind}"
        )
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise IncompatibleError(
                "spec.resources.gpu",
                f"method {name} was asked to run on CUDA but no GPU is visible",
            )


_REGISTRY: dict[str, type[QuantizationMethod]] = {}


def register(cls: type[QuantizationMethod]) -> type[QuantizationMethod]:
    """Make ``cls`` the engine's implementation of the table entry named ``cls.name``."""
    try:
        method_spec(cls.name)
    except InvalidSpecError as exc:
        raise KubequantError(f"method {cls.name!r} is not in the API's method table") from exc
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Forget the engine's implementation of ``name`` (tests of a throwaway method)."""
    _REGISTRY.pop(name, None)


def _implementation(name: str) -> type[QuantizationMethod] | None:
    """The class registered for ``name``, importing the engine module its table entry names."""
    importlib.import_module(method_spec(name).engine_module)
    return _REGISTRY.get(name)


def registry() -> dict[str, type[QuantizationMethod]]:
    """Every method of the table that this engine implements, by name."""
    found = {name: _implementation(name) for name in method_names()}
    return {name: cls for name, cls in found.items() if cls is not None}


def get_method(name: str, field: str = "spec.method") -> QuantizationMethod:
    """An instance of the method ``name``; IncompatibleError naming ``field`` when unknown."""
    try:
        cls = _implementation(name)
    except InvalidSpecError as exc:
        raise IncompatibleError(field, exc.message) from exc
    if cls is None:
        raise IncompatibleError(field, f"method {name!r} is not available in this engine")
    return cls()


__all__ = [
    "ArtifactInfo",
    "IncompatibleError",
    "InferenceModel",
    "Loader",
    "MethodError",
    "QuantizationMethod",
    "QuantizeRequest",
    "check_device",
    "get_method",
    "register",
    "registry",
    "unregister",
]
