"""The method table: every fact about a quantization method, one record per method.

Everything else derives from this table: the method names the API accepts (the pydantic
validation and the CRD's enum), the CRD's per-method CEL rules on ``params``, the GPU
default, the task/method compatibility check the operator and the engine both call, the
engine module that implements a method, the libraries the engine preloads for it and the
dry-run estimates. Adding a method is one :class:`MethodSpec` passed to
:func:`register_method` plus one engine module whose class implements ``quantize`` and
``load`` (see ``optimizer_job/methods/base.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from kubequant_api.base import ApiModel, field_path
from kubequant_api.constants import Task
from kubequant_api.errors import InvalidSpecError, KubequantError

log = logging.getLogger(__name__)

AUTO = "auto"
ALL_TASKS: frozenset[Task] = frozenset(
    {Task.CAUSAL_LM, Task.FEATURE_EXTRACTION, Task.SEQUENCE_CLASSIFICATION}
)
DeviceSupport = Literal["any", "cpu", "cuda"]

# --------------------------------------------------------------------------- params


class NoParams(ApiModel):
    """This method takes no parameters."""


class BnbInt8Params(ApiModel):
    threshold: float = Field(
        6.0,
        ge=0.0,
        le=100.0,
        description="LLM.int8 outlier threshold: activations above it stay in 16-bit.",
    )


class Bnb4BitParams(ApiModel):
    double_quant: bool = Field(
        True,
        description="Quantize the quantization constants too (saves ~0.4 bit/param). On by "
        "default: it also avoids a bitsandbytes CPU bug that corrupts saved 4-bit checkpoints.",
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the matmuls run on the dequantized weights."
    )


class GptqParams(ApiModel):
    bits: Literal[2, 3, 4, 8] = Field(4, description="Bits per weight.")
    group_size: Literal[-1, 32, 64, 128, 256] = Field(
        128, description="Weights sharing one scale; -1 means one group per output channel."
    )
    desc_act: bool = Field(False, description="Quantize columns in order of activation size.")
    sym: bool = Field(True, description="Symmetric quantization (no zero point).")


class AwqParams(ApiModel):
    bits: Literal[4] = Field(4, description="Bits per weight (AWQ supports 4).")
    group_size: Literal[32, 64, 128] = Field(128, description="Weights sharing one scale.")


class TorchaoInt4Params(ApiModel):
    group_size: Literal[32, 64, 128, 256] = Field(128, description="Weights sharing one scale.")


class OnnxInt8Params(ApiModel):
    per_channel: bool = Field(
        True, description="One scale per output channel instead of one per tensor."
    )


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class MethodSpec:
    """Everything kubequant knows about one method, apart from how it quantizes."""

    name: str
    params: type[ApiModel]  # the typed ``params`` it accepts
    engine_module: str  # the engine module whose @register class implements it
    supported_tasks: frozenset[Task] = ALL_TASKS
    needs_calibration: bool = False
    prefers_gpu: bool = False  # resources.gpu defaults to 1 when a planned method prefers one
    device_support: DeviceSupport = "any"  # where quantize() can run
    # dryRun size estimates: artifact bytes per fp32 byte of the weights it quantizes (the
    # matrices; embeddings and the LM head too when quantizes_embeddings, else kept as stored)
    expected_size_ratio: float = 0.5
    quantizes_embeddings: bool = False
    quantize_s_per_mparam: float = 0.05  # CPU seconds per million parameters (GPU: /10)
    runtime_modules: tuple[str, ...] = ()  # imported before the baseline is measured

    def __post_init__(self) -> None:
        if not self.name or self.name == AUTO:
            raise KubequantError(f"a method cannot be named {self.name!r}")
        if not self.supported_tasks or not self.supported_tasks <= ALL_TASKS:
            raise KubequantError(f"method {self.name}: supported_tasks must be concrete tasks")
        if not 0.0 < self.expected_size_ratio <= 1.0:
            raise KubequantError(f"method {self.name}: expected_size_ratio must be in (0, 1]")


_TABLE: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the table; a name can be registered once."""
    if spec.name in _TABLE:
        raise KubequantError(f"method {spec.name!r} is already in the method table")
    _TABLE[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method from the table (tests that register a throwaway method)."""
    _TABLE.pop(name, None)


def method_names() -> tuple[str, ...]:
    """Every quantization method, in table order (``auto`` is not one)."""
    return tuple(_TABLE)


def method_spec(name: str, field: str = "spec.method") -> MethodSpec:
    """The table entry of ``name``; InvalidSpecError naming ``field`` when there is none."""
    try:
        return _TABLE[name]
    except KeyError:
        choices = ", ".join((*_TABLE, AUTO))
        raise InvalidSpecError(field, f"unknown method {name!r}; choose one of {choices}") from None


class _Params(Mapping[str, type[ApiModel]]):
    """name -> params model, read from the table (methods registered later included)."""

    def __getitem__(self, name: str) -> type[ApiModel]:
        return _TABLE[name].params

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(_TABLE))

    def __len__(self) -> int:
        return len(_TABLE)


class _Names(Collection[str]):
    """The method names, read from the table; with ``auto`` last when asked for."""

    def __init__(self, with_auto: bool) -> None:
        self._with_auto = with_auto

    def _names(self) -> tuple[str, ...]:
        return (*_TABLE, AUTO) if self._with_auto else tuple(_TABLE)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __repr__(self) -> str:
        return repr(self._names())


METHOD_PARAMS: Mapping[str, type[ApiModel]] = _Params()
QUANTIZATION_METHODS: Collection[str] = _Names(with_auto=False)
METHODS: Collection[str] = _Names(with_auto=True)  # what spec.method accepts


def validate_method_params(method: str, params: ApiModel | None, field: str) -> ApiModel:
    """Typed params for ``method``; raises InvalidSpecError naming the offending field."""
    model = method_spec(method, field.rsplit(".", 1)[0] + ".method").params
    given = params.to_api() if params is not None else {}
    allowed = {f.alias or name for name, f in model.model_fields.items()}
    for key in given:
        if key not in allowed:
            accepted = ", ".join(sorted(allowed)) or "none"
            raise InvalidSpecError(
                f"{field}.{key}",
                f"{key!r} is not a parameter of method {method} (accepted: {accepted})",
            )
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidSpecError(
            field_path(field, tuple(err["loc"])), f"{err['msg']} for method {method}"
        ) from exc


# --------------------------------------------------------------------------- wire types


class Params(ApiModel):
    """Union of every method's parameters; which ones a method accepts is checked per method."""

    threshold: float | None = Field(None, description="bnb-int8: outlier threshold (0-100).")
    double_quant: bool | None = Field(None, description="bnb-nf4, bnb-fp4: double quantization.")
    compute_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="bnb-nf4, bnb-fp4: compute dtype."
    )
    bits: int | None = Field(None, description="gptq: 2, 3, 4 or 8; awq: 4.")
    group_size: int | None = Field(
        None,
        description="gptq: -1, 32, 64, 128, 256; awq: 32, 64, 128; torchao-int4-weight: "
        "32, 64, 128, 256.",
    )
    desc_act: bool | None = Field(None, description="gptq: activation-order quantization.")
    sym: bool | None = Field(None, description="gptq: symmetric quantization.")
    per_channel: bool | None = Field(None, description="onnx-int8: per-channel scales.")


def _known_method(with_auto: bool) -> Callable[[str], str]:
    """A validator accepting the names in the method table (and ``auto`` when asked)."""

    def check(name: str) -> str:
        names = METHODS if with_auto else QUANTIZATION_METHODS
        if name not in names:
            raise PydanticCustomError(
                "unknown_method",
                "unknown method; choose one of {choices}",
                {"choices": ", ".join(names)},
            )
        return name

    return check


def method_enum(with_auto: bool) -> Callable[[dict[str, Any]], None]:
    """The CRD's enum for a method field, read from the method table when the schema is made."""

    def extra(schema: dict[str, Any]) -> None:
        schema["enum"] = list(METHODS if with_auto else QUANTIZATION_METHODS)

    return extra


# Validated against the method table, not a Literal: a registered method is accepted at once.
MethodName = Annotated[str, AfterValidator(_known_method(with_auto=True))]
CandidateMethodName = Annotated[str, AfterValidator(_known_method(with_auto=False))]


# --------------------------------------------------------------------------- a parsed spec's plan


@dataclass(frozen=True)
class PlannedMethod:
    """One method a spec asks to run: its table entry, typed params and the field naming it."""

    index: int
    method: MethodSpec
    params: ApiModel
    field: str  # spec.method or spec.candidates[i].method

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def params_dict(self) -> dict[str, Any]:
        return self.params.model_dump(by_alias=True, mode="json")


# --------------------------------------------------------------------------- compatibility


def incompatibility(
    method: str, task: Task | str, field: str, device: str | None = None
) -> InvalidSpecError | None:
    """Why ``method`` cannot run on a ``task`` model (on ``device``), naming ``field``.

    None when it can. Task ``auto`` is no problem yet: the engine asks again once it has read
    the model. Without a ``device`` (the operator does not know it) only the task is checked.
    """
    spec = method_spec(method, field)
    resolved = Task(task)
    if resolved != Task.AUTO and resolved not in spec.supported_tasks:
        supported = ", ".join(sorted(str(t) for t in spec.supported_tasks))
        return InvalidSpecError(
            field,
            f"method {method} does not support task {resolved} (spec.model.task; supported: "
            f"{supported})",
        )
    kind = None if device is None else device.split(":", 1)[0]
    if spec.device_support == "cuda" and kind is not None and kind != "cuda":
        return InvalidSpecError(
            field,
            f"method {method} needs a CUDA GPU and this engine runs on {kind} "
            "(set spec.resources.gpu, or choose a CPU method)",
        )
    if spec.device_support == "cpu" and kind not in (None, "cpu"):
        log.info("method %s runs on CPU only; quantizing on CPU", method)
    return None


def first_incompatibility(
    planned: Collection[PlannedMethod], task: Task | str, device: str | None = None
) -> InvalidSpecError | None:
    """The first planned method that cannot run on ``task`` (see :func:`incompatibility`)."""
    for p in planned:
        problem = incompatibility(p.name, task, p.field, device)
        if problem is not None:
            return problem
    return None


# --------------------------------------------------------------------------- the built-ins

_ENGINE = "optimizer_job.methods."
_BNB = ("bitsandbytes",)
_TORCHAO = ("torchao.quantization",)
_QUANTO = ("optimum.quanto",)
_LLMCOMPRESSOR = ("llmcompressor", "llmcompressor.entrypoints.oneshot", "datasets")
_ONNX = ("onnx", "onnxruntime", "onnxruntime.quantization", "onnxscript", "torch.onnx")
_CAUSAL_LM = frozenset({Task.CAUSAL_LM})

# fmt: off
for _spec in (
    MethodSpec(
        "bnb-int8", BnbInt8Params, _ENGINE + "bnb_methods", prefers_gpu=True,
        expected_size_ratio=0.27, runtime_modules=_BNB,
    ),
    MethodSpec(
        "bnb-nf4", Bnb4BitParams, _ENGINE + "bnb_methods", prefers_gpu=True,
        expected_size_ratio=0.16, runtime_modules=_BNB,
    ),
    MethodSpec(
        "bnb-fp4", Bnb4BitParams, _ENGINE + "bnb_methods", prefers_gpu=True,
        expected_size_ratio=0.16, runtime_modules=_BNB,
    ),
    MethodSpec(
        "gptq", GptqParams, _ENGINE + "llmcompressor_methods", supported_tasks=_CAUSAL_LM,
        needs_calibration=True, prefers_gpu=True, expected_size_ratio=0.16,
        quantize_s_per_mparam=0.5, runtime_modules=_LLMCOMPRESSOR,
    ),
    MethodSpec(
        "awq", AwqParams, _ENGINE + "llmcompressor_methods", supported_tasks=_CAUSAL_LM,
        needs_calibration=True, prefers_gpu=True, expected_size_ratio=0.16,
        quantize_s_per_mparam=0.5, runtime_modules=_LLMCOMPRESSOR,
    ),
    MethodSpec(
        "torchao-int8-weight", NoParams, _ENGINE + "torchao_methods",
        expected_size_ratio=0.27, runtime_modules=_TORCHAO,
    ),
    MethodSpec(
        "torchao-int8-dynamic", NoParams, _ENGINE + "torchao_methods",
        expected_size_ratio=0.27, runtime_modules=_TORCHAO,
    ),
    MethodSpec(
        "torchao-int4-weight", TorchaoInt4Params, _ENGINE + "torchao_methods", prefers_gpu=True,
        device_support="cuda", expected_size_ratio=0.16, runtime_modules=_TORCHAO,
    ),
    MethodSpec(
        "quanto-int8", NoParams, _ENGINE + "quanto_methods",
        expected_size_ratio=0.27, runtime_modules=_QUANTO,
    ),
    MethodSpec(
        "quanto-int4", NoParams, _ENGINE + "quanto_methods",
        expected_size_ratio=0.16, runtime_modules=_QUANTO,
    ),
    MethodSpec(
        "onnx-int8", OnnxInt8Params, _ENGINE + "onnx_methods", device_support="cpu",
        expected_size_ratio=0.26, quantizes_embeddings=True, quantize_s_per_mparam=0.3,
        runtime_modules=_ONNX,
    ),
):
    register_method(_spec)
del _spec
# fmt: on

__all__ = [
    "ALL_TASKS",
    "AUTO",
    "METHODS",
    "METHOD_PARAMS",
    "QUANTIZATION_METHODS",
    "AwqParams",
    "Bnb4BitParams",
    "BnbInt8Params",
    "CandidateMethodName",
    "GptqParams",
    "MethodName",
    "MethodSpec",
    "NoParams",
    "OnnxInt8Params",
    "Params",
    "PlannedMethod",
    "TorchaoInt4Params",
    "first_incompatibility",
    "incompatibility",
    "method_enum",
    "method_names",
    "method_spec",
    "register_method",
    "unregister_method",
    "validate_method_params",
]
