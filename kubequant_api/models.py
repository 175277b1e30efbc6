"""The ModelOptimization API (v1alpha1) as pydantic models.

These models are the single source of the API: the CRD in ``crds/`` is generated from them
(``python -m kubequant_api.crd``) and a test fails when the committed CRD drifts. The
operator and the engine both parse specs and build statuses with them.

Per-method ``params`` are validated twice with the same table (``METHOD_PARAMS``): by CEL
rules in the CRD (generated from the table) and by :meth:`ModelOptimizationSpec.method_params`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from kubequant_api.constants import (
    MAX_CANDIDATES,
    OUTPUT_URI_SCHEMES,
    URI_SCHEMES,
    GateVerdict,
    Phase,
    Stage,
    Task,
)
from kubequant_api.errors import InvalidSpecError

URI_PATTERN = r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?(@[^\s@]+)?|(s3|gs)://[a-z0-9][a-z0-9._-]{1,62}(/[^\s]*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^\s]*|file:///[^\s]*)$"
OUTPUT_URI_PATTERN = r"^((s3|gs)://[a-z0-9][a-z0-9._-]{1,62}(/[^\s]*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^\s]*|file:///[^\s]*)$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        use_enum_values=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the API serves it: camelCase keys, no unset optionals."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


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


METHOD_PARAMS: dict[str, type[ApiModel]] = {
    "bnb-int8": BnbInt8Params,
    "bnb-nf4": Bnb4BitParams,
    "bnb-fp4": Bnb4BitParams,
    "gptq": GptqParams,
    "awq": AwqParams,
    "torchao-int8-weight": NoParams,
    "torchao-int8-dynamic": NoParams,
    "torchao-int4-weight": TorchaoInt4Params,
    "quanto-int8": NoParams,
    "quanto-int4": NoParams,
    "onnx-int8": OnnxInt8Params,
}
METHODS: tuple[str, ...] = (*METHOD_PARAMS, "auto")
QUANTIZATION_METHODS: tuple[str, ...] = tuple(METHOD_PARAMS)
# Methods that run best with a GPU: resources.gpu defaults to 1 for them, 0 for the others.
GPU_PREFERRING_METHODS: frozenset[str] = frozenset(
    {"bnb-int8", "bnb-nf4", "bnb-fp4", "gptq", "awq", "torchao-int4-weight"}
)
CALIBRATED_METHODS: frozenset[str] = frozenset({"gptq", "awq"})

MethodName = Literal[
    "bnb-int8",
    "bnb-nf4",
    "bnb-fp4",
    "gptq",
    "awq",
    "torchao-int8-weight",
    "torchao-int8-dynamic",
    "torchao-int4-weight",
    "quanto-int8",
    "quanto-int4",
    "onnx-int8",
    "auto",
]
CandidateMethodName = Literal[
    "bnb-int8",
    "bnb-nf4",
    "bnb-fp4",
    "gptq",
    "awq",
    "torchao-int8-weight",
    "torchao-int8-dynamic",
    "torchao-int4-weight",
    "quanto-int8",
    "quanto-int4",
    "onnx-int8",
]


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


def _field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    return ".".join([prefix, *(to_camel(str(p)) for p in loc)]) if loc else prefix


def validate_method_params(method: str, params: Params | None, field: str) -> ApiModel:
    """Typed params for ``method``; raises InvalidSpecError naming the offending field."""
    if method not in METHOD_PARAMS:
        raise InvalidSpecError(
            field.rsplit(".", 1)[0] + ".method",
            f"unknown method {method!r}; choose one of {', '.join(METHODS)}",
        )
    model = METHOD_PARAMS[method]
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
            _field_path(field, tuple(err["loc"])), f"{err['msg']} for method {method}"
        ) from exc


# --------------------------------------------------------------------------- spec


class ModelSource(ApiModel):
    uri: Annotated[str, Field(max_length=2048, pattern=URI_PATTERN)] = Field(
        description="Where the model is: hf://repo[@revision], s3://bucket/prefix, "
        "gs://bucket/prefix, pvc://claim/path or file:///absolute/path."
    )
    task: Task = Field(
        Task.AUTO,
        description="What the model does; auto reads it from the model's config.",
    )
    credentials_secret: Annotated[str, Field(max_length=253, pattern=DNS_LABEL_PATTERN)] | None = (
        Field(
            None,
            description="Secret in the object's namespace whose keys become the engine's "
            "environment (HF_TOKEN, AWS_ACCESS_KEY_ID, ...). Never read by the operator.",
        )
    )
    trust_remote_code: bool = Field(
        False, description="Allow executing code shipped in the model repository (opt-in)."
    )


class Candidate(ApiModel):
    method: CandidateMethodName = Field(description="A quantization method (not auto).")
    params: Params | None = Field(None, description="Parameters of that method.")


class Calibration(ApiModel):
    dataset_uri: Annotated[str, Field(max_length=2048, pattern=URI_PATTERN)] | None = Field(
        None,
        description="Text, JSONL (a 'text' field) or Parquet calibration data; "
        "a small built-in English corpus when empty.",
    )
    samples: int = Field(128, ge=1, le=4096, description="Number of calibration samples.")
    sequence_length: int = Field(512, ge=8, le=32768, description="Tokens per sample.")


class QualityGate(ApiModel):
    max_perplexity_increase_percent: float | None = Field(
        None, ge=0, le=1000, description="Causal LMs: perplexity may rise at most this much (%)."
    )
    min_cosine_similarity: float | None = Field(
        None, ge=-1, le=1, description="Encoders: mean-pooled embedding cosine vs the original."
    )
    min_top1_agreement: float | None = Field(
        None, ge=0, le=1, description="Causal LMs: next-token argmax agreement vs the original."
    )

    def requested(self) -> bool:
        return any(
            v is not None
            for v in (
                self.max_perplexity_increase_percent,
                self.min_cosine_similarity,
                self.min_top1_agreement,
            )
        )


class Evaluation(ApiModel):
    dataset_uri: Annotated[str, Field(max_length=2048, pattern=URI_PATTERN)] | None = Field(
        None, description="Evaluation text; default: a held-out slice of the calibration data."
    )
    samples: int = Field(64, ge=1, le=4096, description="Number of evaluation samples.")
    quality_gate: QualityGate | None = Field(
        None, description="Bounds that must all hold; else Failed (or the next candidate)."
    )


class Output(ApiModel):
    uri: Annotated[str, Field(max_length=2048, pattern=OUTPUT_URI_PATTERN)] = Field(
        description="Where the artifact is written: s3://, gs://, pvc://claim/path or file:///."
    )
    credentials_secret: Annotated[str, Field(max_length=253, pattern=DNS_LABEL_PATTERN)] | None = (
        Field(None, description="Secret whose keys become the engine's environment for writing.")
    )
    overwrite: bool = Field(False, description="Replace an existing artifact at the output.")


class Toleration(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    key: str | None = Field(None, description="Taint key the toleration matches; empty: all.")
    operator: Literal["Exists", "Equal"] | None = Field(
        None, description="Equal (the default) compares value; Exists matches any value."
    )
    value: str | None = Field(None, description="Taint value to match with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty: all effects."
    )
    toleration_seconds: int | None = Field(
        None, description="With NoExecute: how long the pod stays bound after the taint appears."
    )


class Resources(ApiModel):
    gpu: int | None = Field(
        None,
        ge=0,
        le=16,
        description="GPUs requested (count of gpuResourceName); 0 = CPU only. Unset: 1 for "
        "bnb-*, gptq, awq and torchao-int4-weight, 0 for the others.",
    )
    gpu_resource_name: Annotated[str, Field(max_length=253)] = Field(
        "nvidia.com/gpu", description="Extended resource name of the GPU."
    )
    cpu: Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)] | None = Field(
        None, description="CPU request and limit; default from operator configuration."
    )
    memory: Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)] | None = Field(
        None, description="Memory request and limit; default from operator configuration."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(
        default_factory=list, description="Pod tolerations."
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict, description="Pod affinity (core/v1 Affinity), passed through."
    )
    priority_class_name: Annotated[str, Field(max_length=253)] = Field(
        "", description="Pod priorityClassName."
    )


class Cache(ApiModel):
    pvc_name: Annotated[str, Field(max_length=253)] = Field(
        "", description="PVC mounted as HF_HOME: a model download cache shared across runs."
    )


class ModelOptimizationSpec(ApiModel):
    CEL_RULES: ClassVar[list[dict[str, str]]] = []  # filled in by kubequant_api.crd

    model: ModelSource = Field(description="The model to optimize.")
    method: MethodName = Field(description="Quantization method, or auto with candidates.")
    params: Params | None = Field(None, description="Method-specific parameters.")
    candidates: Annotated[list[Candidate], Field(max_length=MAX_CANDIDATES)] | None = Field(
        None, description="Only with method auto: tried in order, best passing wins."
    )
    calibration: Calibration = Field(
        default_factory=Calibration, description="Data for methods that calibrate (gptq, awq)."
    )
    evaluation: Evaluation = Field(
        default_factory=Evaluation, description="How the artifact is measured and gated."
    )
    output: Output = Field(description="Where the optimized artifact is stored.")
    resources: Resources = Field(
        default_factory=Resources, description="Becomes the Job's pod template."
    )
    image: Annotated[str, Field(max_length=512)] = Field(
        "", description="Engine image override; default from operator configuration."
    )
    timeout_seconds: int = Field(7200, ge=60, le=604800, description="Job activeDeadlineSeconds.")
    retries: int = Field(
        2, ge=0, le=10, description="Job backoffLimit (failures that cannot succeed never retry)."
    )
    ttl_seconds_after_finished: int = Field(
        86400, ge=0, le=2592000, description="Job ttlSecondsAfterFinished."
    )
    queue_name: Annotated[str, Field(max_length=63)] = Field(
        "", description="Kueue LocalQueue: the Job is created suspended with the queue label."
    )
    cache: Cache = Field(default_factory=Cache, description="Shared model-download cache.")
    suspend: bool = Field(False, description="true: no Job runs (a running one is stopped).")
    dry_run: bool = Field(
        False, description="Preflight only: check access, estimate, report status.result.plan."
    )

    @model_validator(mode="after")
    def _check_method_params(self) -> ModelOptimizationSpec:
        # Raised as ValueError inside pydantic; use ``parse_spec`` for InvalidSpecError.
        if self.method == "auto":
            if not self.candidates:
                raise ValueError("spec.candidates: method auto needs at least one candidate")
            if self.params is not None and self.params.to_api():
                raise ValueError(
                    "spec.params: method auto takes no params (set them per candidate)"
                )
            for i, cand in enumerate(self.candidates):
                validate_method_params(cand.method, cand.params, f"spec.candidates[{i}].params")
        else:
            if self.candidates is not None:
                raise ValueError("spec.candidates: only allowed with method auto")
            validate_method_params(self.method, self.params, "spec.params")
        return self

    def method_params(self) -> ApiModel:
        """Typed parameters of ``method`` (not auto)."""
        return validate_method_params(self.method, self.params, "spec.params")

    def plan_candidates(self) -> list[tuple[str, ApiModel]]:
        """The (method, typed params) pairs to run, in order."""
        if self.method == "auto":
            return [
                (
                    c.method,
                    validate_method_params(c.method, c.params, f"spec.candidates[{i}].params"),
                )
                for i, c in enumerate(self.candidates or [])
            ]
        return [(self.method, self.method_params())]

    def gpu_count(self) -> int:
        if self.resources.gpu is not None:
            return self.resources.gpu
        methods = {m for m, _ in self.plan_candidates()}
        return 1 if methods & GPU_PREFERRING_METHODS else 0


_VALUE_ERROR_FIELD = re.compile(r"^(?:Value error, )?(spec(?:\.[\w\[\]]+)+):\s*(.*)$", re.S)


def parse_spec(raw: dict[str, Any]) -> ModelOptimizationSpec:
    """Parse a spec dict; every problem becomes an InvalidSpecError naming the field."""
    try:
        return ModelOptimizationSpec.model_validate(raw)
    except InvalidSpecError:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, InvalidSpecError):
            raise ctx_error from exc
        msg = str(err["msg"])
        m = _VALUE_ERROR_FIELD.match(msg)
        if m:
            raise InvalidSpecError(m.group(1), m.group(2)) from exc
        loc = tuple(err["loc"])
        field = _field_path("spec", loc)
        given = err.get("input")
        detail = msg if err["type"] == "missing" else f"{msg} (got {given!r})"
        raise InvalidSpecError(field, detail) from exc


def parse_manifest(obj: dict[str, Any]) -> ModelOptimizationSpec:
    """Parse a whole ModelOptimization object (kind and apiVersion checked)."""
    from kubequant_api.constants import API_VERSION, KIND

    if obj.get("apiVersion") != API_VERSION:
        raise InvalidSpecError(
            "apiVersion", f"expected {API_VERSION}, got {obj.get('apiVersion')!r}"
        )
    if obj.get("kind") != KIND:
        raise InvalidSpecError("kind", f"expected {KIND}, got {obj.get('kind')!r}")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise InvalidSpecError("spec", "missing or not an object")
    return parse_spec(spec)


# --------------------------------------------------------------------------- status


class Condition(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    type: str = Field(description="Ready, Reconciling, Stalled or Suspended.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        "", max_length=1024, description="Why the condition has this status (CamelCase)."
    )
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: str | None = Field(
        None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        None, description="The spec generation the condition was computed for."
    )


class Progress(ApiModel):
    stage: Stage = Field(
        description="Pending, Loading, Calibrating, Quantizing, Evaluating, " "Saving or Done."
    )
    percent: int = Field(0, ge=0, le=100, description="How much of the run is done (%).")
    generation: int | None = Field(None, description="The spec generation this progress is for.")
    candidate: str | None = Field(None, description="With method auto: the candidate running.")


class Failure(ApiModel):
    reason: str = Field(description="Why the run failed or cannot start: a Stalled reason.")
    message: str = Field("", description="What went wrong, naming the field or file if it can.")
    exit_code: int | None = Field(
        None, description="The engine container's exit code, when it ran and ended."
    )


class Measurements(ApiModel):
    latency_ms: float | None = Field(
        None, description="Median time of one forward pass over the benchmark input (ms)."
    )
    tokens_per_second: float | None = Field(
        None, description="Tokens of the benchmark input per second of that latency."
    )
    perplexity: float | None = Field(
        None, description="Causal LMs: perplexity on the evaluation texts."
    )
    peak_memory_bytes: int | None = Field(
        None,
        description="Peak memory added by loading and running the model (CUDA allocated, "
        "else resident set).",
    )


class CandidateResult(ApiModel):
    method: str = Field(description="The candidate's method.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="The candidate's params, defaults filled in."
    )
    optimized_size_bytes: int | None = Field(None, description="Size of its artifact's weights.")
    compression_ratio: float | None = Field(
        None, description="originalSizeBytes / its optimizedSizeBytes."
    )
    speedup: float | None = Field(None, description="Baseline latency / its latency.")
    perplexity_increase_percent: float | None = Field(
        None, description="Causal LMs: its perplexity increase over the original (%)."
    )
    cosine_similarity: float | None = Field(
        None, description="Encoders: mean cosine of its embeddings vs the original's."
    )
    top1_agreement: float | None = Field(
        None, description="Causal LMs: share of next-token predictions equal to the original's."
    )
    quality_gate: GateVerdict | None = Field(None, description="Its quality-gate verdict.")
    error: str | None = Field(None, description="Why this candidate produced no artifact.")


class Result(ApiModel):
    generation: int | None = Field(None, description="The spec generation these results are for.")
    method: str | None = Field(
        None, description="The method of the artifact (with auto: the winning candidate's)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Its params, defaults filled in."
    )
    original_size_bytes: int | None = Field(None, description="Size of the original weights.")
    optimized_size_bytes: int | None = Field(None, description="Size of the artifact's weights.")
    compression_ratio: float | None = Field(
        None, description="originalSizeBytes / optimizedSizeBytes."
    )
    baseline: Measurements | None = Field(None, description="The original model, measured.")
    optimized: Measurements | None = Field(
        None, description="The artifact as written and reloaded, measured the same way."
    )
    speedup: float | None = Field(None, description="Baseline latency / optimized latency.")
    perplexity_increase_percent: float | None = Field(
        None, description="Causal LMs: perplexity increase over the original (%)."
    )
    cosine_similarity: float | None = Field(
        None, description="Encoders: mean cosine of the embeddings vs the original's."
    )
    top1_agreement: float | None = Field(
        None, description="Causal LMs: share of next-token predictions equal to the original's."
    )
    quality_gate: GateVerdict | None = Field(
        None, description="Passed, Failed, or NotRequested when no bound was given."
    )
    output_uri: str | None = Field(
        None, description="Where the artifact was published (credentials removed)."
    )
    output_digest: str | None = Field(
        None, description="sha256 of the artifact's file manifest (paths, sizes, hashes)."
    )
    candidates: Annotated[list[CandidateResult], Field(max_length=MAX_CANDIDATES)] = Field(
        default_factory=list, description="With method auto: every candidate tried, in order."
    )
    plan: dict[str, Any] | None = Field(
        None, description="With dryRun: estimated memory, time, sizes, compatibility verdicts."
    )


class ModelOptimizationStatus(ApiModel):
    phase: Phase | None = Field(None, description="Pending, Running, Succeeded or Failed.")
    observed_generation: int | None = Field(
        None, description="The spec generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Reconciling, Stalled and Suspended (kstatus)."
    )
    job_name: str | None = Field(
        None, description="The engine's Job for this generation (deterministic name)."
    )
    attempts: int | None = Field(None, description="Pods the Job has run so far.")
    start_time: str | None = Field(None, description="When the Job started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the Job ended (RFC 3339).")
    progress: Progress | None = Field(None, description="The engine's stage; written by it.")
    message: str | None = Field(None, description="Summary of the last transition.")
    failure: Failure | None = Field(None, description="Why the run failed or is stalled.")
    result: Result | None = Field(
        None, description="What the engine measured and published; written by it."
    )


class ModelOptimization(ApiModel):
    """A whole object (used by the CRD generator and by tests)."""

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: dict[str, Any]
    spec: ModelOptimizationSpec
    status: ModelOptimizationStatus | None = None


__all__ = [
    "CALIBRATED_METHODS",
    "GPU_PREFERRING_METHODS",
    "METHODS",
    "METHOD_PARAMS",
    "OUTPUT_URI_SCHEMES",
    "QUANTIZATION_METHODS",
    "URI_SCHEMES",
    "ApiModel",
    "Calibration",
    "Candidate",
    "CandidateResult",
    "Condition",
    "Evaluation",
    "Failure",
    "Measurements",
    "ModelOptimization",
    "ModelOptimizationSpec",
    "ModelOptimizationStatus",
    "ModelSource",
    "Output",
    "Params",
    "Progress",
    "QualityGate",
    "Resources",
    "Result",
    "parse_manifest",
    "parse_spec",
    "validate_method_params",
]
