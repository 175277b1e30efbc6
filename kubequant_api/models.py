"""The ModelOptimization API (v1alpha1) as pydantic models.

These models are the single source of the API: the CRD in ``crds/`` is generated from them
(``python -m kubequant_api.crd``) and a test fails when the committed CRD drifts. The
operator and the engine both parse specs and build statuses with them.

Which methods exist and what each accepts comes from the method table
(:mod:`kubequant_api.methods`): the CRD's enum and CEL rules are generated from it, and the
spec's validator checks against it once, leaving the typed plan on the parsed spec
(:attr:`ModelOptimizationSpec.planned`) for everything downstream.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from kubequant_api.base import ApiModel, field_path
from kubequant_api.constants import (
    MAX_CANDIDATES,
    OUTPUT_URI_SCHEMES,
    URI_SCHEMES,
    Task,
)
from kubequant_api.errors import InvalidSpecError
from kubequant_api.methods import (
    AUTO,
    METHOD_PARAMS,
    METHODS,
    QUANTIZATION_METHODS,
    AwqParams,
    Bnb4BitParams,
    BnbInt8Params,
    CandidateMethodName,
    GptqParams,
    MethodName,
    NoParams,
    OnnxInt8Params,
    Params,
    PlannedMethod,
    TorchaoInt4Params,
    method_enum,
    method_spec,
    validate_method_params,
)
from kubequant_api.status import (  # the status half of the API, re-exported
    CandidateResult,
    Condition,
    Failure,
    Measurements,
    ModelOptimizationStatus,
    Progress,
    Result,
)

URI_PATTERN = r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?(@[^\s@]+)?|(s3|gs)://[a-z0-9][a-z0-9._-]{1,62}(/[^\s]*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^\s]*|file:///[^\s]*)$"
OUTPUT_URI_PATTERN = r"^((s3|gs)://[a-z0-9][a-z0-9._-]{1,62}(/[^\s]*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^\s]*|file:///[^\s]*)$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


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
    method: CandidateMethodName = Field(
        description="A quantization method (not auto).", json_schema_extra=method_enum(False)
    )
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
    model: ModelSource = Field(description="The model to optimize.")
    method: MethodName = Field(
        description="Quantization method, or auto with candidates.",
        json_schema_extra=method_enum(True),
    )
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

    # The typed plan, filled once by the validator below: (method, typed params, field).
    _planned: tuple[PlannedMethod, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _plan(self) -> ModelOptimizationSpec:
        # Raised as ValueError inside pydantic; use ``parse_spec`` for InvalidSpecError.
        if self.method == AUTO:
            if not self.candidates:
                raise ValueError("spec.candidates: method auto needs at least one candidate")
            if self.params is not None and self.params.to_api():
                raise ValueError(
                    "spec.params: method auto takes no params (set them per candidate)"
                )
            wanted = [
                (c.method, c.params, f"spec.candidates[{i}]") for i, c in enumerate(self.candidates)
            ]
        else:
            if self.candidates is not None:
                raise ValueError("spec.candidates: only allowed with method auto")
            wanted = [(self.method, self.params, "spec")]
        self._planned = tuple(
            PlannedMethod(
                index=i,
                method=method_spec(name, f"{prefix}.method"),
                params=validate_method_params(name, params, f"{prefix}.params"),
                field=f"{prefix}.method",
            )
            for i, (name, params, prefix) in enumerate(wanted)
        )
        return self

    @property
    def planned(self) -> tuple[PlannedMethod, ...]:
        """The methods to run, in order, with typed params (validated once, when parsed)."""
        return self._planned

    def method_params(self) -> ApiModel:
        """Typed parameters of ``method`` (not auto)."""
        return self._planned[0].params

    def plan_candidates(self) -> list[tuple[str, ApiModel]]:
        """The (method, typed params) pairs to run, in order."""
        return [(p.name, p.params) for p in self._planned]

    def gpu_count(self) -> int:
        if self.resources.gpu is not None:
            return self.resources.gpu
        return 1 if any(p.method.prefers_gpu for p in self._planned) else 0


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
        field = field_path("spec", loc)
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


class ModelOptimization(ApiModel):
    """A whole object (used by the CRD generator and by tests)."""

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: dict[str, Any]
    spec: ModelOptimizationSpec
    status: ModelOptimizationStatus | None = None


__all__ = [
    "METHODS",
    "METHOD_PARAMS",
    "OUTPUT_URI_SCHEMES",
    "QUANTIZATION_METHODS",
    "URI_SCHEMES",
    "ApiModel",
    "AwqParams",
    "Bnb4BitParams",
    "BnbInt8Params",
    "Calibration",
    "Candidate",
    "CandidateResult",
    "Condition",
    "Evaluation",
    "Failure",
    "GptqParams",
    "Measurements",
    "ModelOptimization",
    "ModelOptimizationSpec",
    "ModelOptimizationStatus",
    "ModelSource",
    "NoParams",
    "OnnxInt8Params",
    "Output",
    "Params",
    "PlannedMethod",
    "Progress",
    "QualityGate",
    "Resources",
    "Result",
    "TorchaoInt4Params",
    "parse_manifest",
    "parse_spec",
    "validate_method_params",
]
