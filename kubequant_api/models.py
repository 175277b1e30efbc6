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
from collections.abc import Callable, Iterator, Sequence
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
    Reproducibility,
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
    max_tokens: int = Field(
        65536,
        ge=16,
        le=16_777_216,
        description="Token budget of the evaluation (over all samples; later ones are cut).",
    )
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


# Pod placement. The operator copies these fields into the Job's pod template (and queueName
# into the Kueue label), so the CRD refuses at admission what the API server would refuse in
# the Job (pkg/apis/core/validation: ValidateTolerations, validateAffinity,
# IsExtendedResourceName, ValidatePriorityClassName; IsValidLabelValue for the queue label).
# Single-field formats are OpenAPI patterns (no CEL cost); cross-field rules are CEL, on
# bounded lists and strings so the API server's cost estimate stays within its budget.
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_QUALIFIED_NAME = rf"({_DNS_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?"
QUALIFIED_NAME_PATTERN = rf"^{_QUALIFIED_NAME}$"
OPTIONAL_QUALIFIED_NAME_PATTERN = rf"^({_QUALIFIED_NAME})?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
OPTIONAL_DNS_SUBDOMAIN_PATTERN = rf"^({_DNS_SUBDOMAIN})?$"
EXTENDED_RESOURCE_PATTERN = (
    rf"^({_DNS_SUBDOMAIN}/[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?)?$"
)
# A qualified name is at most 253 (prefix) + 1 + 63 (name) characters.
MAX_QUALIFIED_NAME = 317
MAX_SELECTOR_TERMS = 16  # terms, weighted terms and requirements per list
MAX_SELECTOR_VALUES = 64

QualifiedName = Annotated[str, Field(max_length=MAX_QUALIFIED_NAME, pattern=QUALIFIED_NAME_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]


def _cel(rules: list[dict[str, str]]) -> Callable[[dict[str, Any]], None]:
    """A CRD node's ``x-kubernetes-validations``, added when the schema is made."""

    def extra(schema: dict[str, Any]) -> None:
        schema["x-kubernetes-validations"] = [dict(r) for r in rules]

    return extra


_TOLERATION_RULES = [
    {
        "rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) "
        "|| self.value == ''",
        "message": "value must be empty when `operator` is 'Exists'",
        "fieldPath": ".operator",
    },
    {
        "rule": "(has(self.key) && self.key != '') || (has(self.operator) && "
        "self.operator == 'Exists')",
        "message": 'operator must be Exists when `key` is empty, which means "match all values '
        'and all keys"',
        "fieldPath": ".operator",
    },
    {
        "rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "message": "effect must be 'NoExecute' when `tolerationSeconds` is set",
        "fieldPath": ".effect",
    },
]
_IN_NOT_IN = "must be specified when `operator` is 'In' or 'NotIn'"
_EXISTS = "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
_GT_LT = "must be specified single value when `operator` is 'Lt' or 'Gt'"
_REQUIREMENT_RULES = [
    {
        "rule": "!(self.operator in ['In', 'NotIn']) "
        "|| (has(self.values) && size(self.values) > 0)",
        "message": _IN_NOT_IN,
        "fieldPath": ".values",
        "reason": "FieldValueRequired",
    },
    {
        "rule": "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) "
        "|| size(self.values) == 0",
        "message": _EXISTS,
        "fieldPath": ".values",
        "reason": "FieldValueForbidden",
    },
]
_NODE_REQUIREMENT_RULES = [
    *_REQUIREMENT_RULES,
    {
        "rule": "!(self.operator in ['Gt', 'Lt']) || (has(self.values) && size(self.values) == 1)",
        "message": _GT_LT,
        "fieldPath": ".values",
        "reason": "FieldValueRequired",
    },
]


class Toleration(ApiModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_cel(_TOLERATION_RULES),
    )
    key: (
        Annotated[
            str, Field(max_length=MAX_QUALIFIED_NAME, pattern=OPTIONAL_QUALIFIED_NAME_PATTERN)
        ]
        | None
    ) = Field(None, description="Taint key the toleration matches (a qualified name); empty: all.")
    operator: Literal["Exists", "Equal", ""] | None = Field(
        None, description="Equal (the default) compares value; Exists matches any value."
    )
    value: LabelValue | None = Field(
        None, description="Taint value to match with operator Equal (a label value)."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] | None = Field(
        None, description="Taint effect to match; empty: all effects."
    )
    toleration_seconds: int | None = Field(
        None, description="With NoExecute: how long the pod stays bound after the taint appears."
    )

    def problem(self) -> tuple[str, str] | None:
        """(field, message) of the first rule of ``ValidateTolerations`` this breaks."""
        if self.operator == "Exists" and self.value:
            return "operator", "value must be empty when `operator` is 'Exists'"
        if not self.key and self.operator != "Exists":
            return "operator", str(_TOLERATION_RULES[1]["message"])
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            return "effect", "effect must be 'NoExecute' when `tolerationSeconds` is set"
        return None


def _requirement_problem(operator: str, values: list[str] | None) -> str | None:
    n = len(values or [])
    if operator in ("In", "NotIn") and n == 0:
        return _IN_NOT_IN
    if operator in ("Exists", "DoesNotExist") and n:
        return _EXISTS
    if operator in ("Gt", "Lt") and n != 1:
        return _GT_LT
    return None


class NodeSelectorRequirement(ApiModel):
    model_config = ConfigDict(json_schema_extra=_cel(_NODE_REQUIREMENT_RULES))
    key: QualifiedName = Field(description="The node label key (a qualified name).")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="In/NotIn: values non-empty; Exists/DoesNotExist: no values; Gt/Lt: one."
    )
    values: Annotated[list[LabelValue], Field(max_length=MAX_SELECTOR_VALUES)] | None = Field(
        None, description="Label values."
    )


class NodeFieldSelectorRequirement(ApiModel):
    key: Literal["metadata.name"] = Field(description="The only node field: metadata.name.")
    operator: Literal["In", "NotIn"] = Field(description="In or NotIn.")
    values: Annotated[
        list[Annotated[str, Field(max_length=253, pattern=f"^{_DNS_SUBDOMAIN}$")]],
        Field(min_length=1, max_length=1),
    ] = Field(description="Exactly one node name.")


class NodeSelectorTerm(ApiModel):
    match_expressions: (
        Annotated[list[NodeSelectorRequirement], Field(max_length=MAX_SELECTOR_TERMS)] | None
    ) = Field(None, description="Requirements on node labels (ANDed).")
    match_fields: (
        Annotated[list[NodeFieldSelectorRequirement], Field(max_length=MAX_SELECTOR_TERMS)] | None
    ) = Field(None, description="Requirements on node fields (ANDed).")


class NodeSelector(ApiModel):
    node_selector_terms: Annotated[
        list[NodeSelectorTerm], Field(min_length=1, max_length=MAX_SELECTOR_TERMS)
    ] = Field(description="Terms (ORed); at least one.")


class PreferredSchedulingTerm(ApiModel):
    weight: int = Field(ge=1, le=100, description="Weight, 1-100.")
    preference: NodeSelectorTerm = Field(description="The node selector term.")


class NodeAffinity(ApiModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        None, description="Nodes the pod must run on."
    )
    preferred_during_scheduling_ignored_during_execution: (
        Annotated[list[PreferredSchedulingTerm], Field(max_length=MAX_SELECTOR_TERMS)] | None
    ) = Field(None, description="Nodes the pod prefers.")


class LabelSelectorRequirement(ApiModel):
    model_config = ConfigDict(json_schema_extra=_cel(_REQUIREMENT_RULES))
    key: QualifiedName = Field(description="The label key (a qualified name).")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In/NotIn: values non-empty; Exists/DoesNotExist: no values."
    )
    values: Annotated[list[LabelValue], Field(max_length=MAX_SELECTOR_VALUES)] | None = Field(
        None, description="Label values."
    )


class LabelSelector(ApiModel):
    match_labels: Annotated[dict[str, LabelValue], Field(max_length=MAX_SELECTOR_VALUES)] | None = (
        Field(None, description="Labels that must match exactly.")
    )
    match_expressions: (
        Annotated[list[LabelSelectorRequirement], Field(max_length=MAX_SELECTOR_TERMS)] | None
    ) = Field(None, description="Requirements (ANDed).")


class PodAffinityTerm(ApiModel):
    label_selector: LabelSelector | None = Field(None, description="Pods to (not) co-locate with.")
    namespace_selector: LabelSelector | None = Field(None, description="Namespaces, by label.")
    namespaces: (
        Annotated[
            list[Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)]],
            Field(max_length=MAX_SELECTOR_VALUES),
        ]
        | None
    ) = Field(None, description="Namespaces, by name.")
    topology_key: QualifiedName = Field(
        description="Node label whose value defines the co-location domain (required)."
    )
    match_label_keys: (
        Annotated[list[QualifiedName], Field(max_length=MAX_SELECTOR_TERMS)] | None
    ) = Field(None, description="Pod label keys merged into labelSelector (In).")
    mismatch_label_keys: (
        Annotated[list[QualifiedName], Field(max_length=MAX_SELECTOR_TERMS)] | None
    ) = Field(None, description="Pod label keys merged into labelSelector (NotIn).")


class WeightedPodAffinityTerm(ApiModel):
    weight: int = Field(ge=1, le=100, description="Weight, 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The pod affinity term.")


class PodAffinity(ApiModel):
    required_during_scheduling_ignored_during_execution: (
        Annotated[list[PodAffinityTerm], Field(max_length=MAX_SELECTOR_TERMS)] | None
    ) = Field(None, description="Terms the pod must satisfy.")
    preferred_during_scheduling_ignored_during_execution: (
        Annotated[list[WeightedPodAffinityTerm], Field(max_length=MAX_SELECTOR_TERMS)] | None
    ) = Field(None, description="Terms the pod prefers.")


class Affinity(ApiModel):
    node_affinity: NodeAffinity | None = Field(None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(None, description="Pod anti-affinity.")


def _affinity_problems(affinity: Affinity, path: str) -> Iterator[tuple[str, str]]:
    """(field, message) for each selector requirement whose values break its operator."""

    def requirements(
        items: Sequence[NodeSelectorRequirement | LabelSelectorRequirement] | None, at: str
    ) -> Iterator[tuple[str, str]]:
        for i, req in enumerate(items or []):
            problem = _requirement_problem(req.operator, req.values)
            if problem:
                yield f"{at}[{i}].values", problem

    def node_term(term: NodeSelectorTerm, at: str) -> Iterator[tuple[str, str]]:
        yield from requirements(term.match_expressions, f"{at}.matchExpressions")

    def pod_term(term: PodAffinityTerm, at: str) -> Iterator[tuple[str, str]]:
        for name, sel in (
            ("labelSelector", term.label_selector),
            ("namespaceSelector", term.namespace_selector),
        ):
            if sel is not None:
                yield from requirements(sel.match_expressions, f"{at}.{name}.matchExpressions")

    req, pref = (
        "requiredDuringSchedulingIgnoredDuringExecution",
        "preferredDuringSchedulingIgnoredDuringExecution",
    )
    node = affinity.node_affinity
    if node is not None:
        if node.required_during_scheduling_ignored_during_execution is not None:
            terms = node.required_during_scheduling_ignored_during_execution.node_selector_terms
            for i, node_t in enumerate(terms):
                yield from node_term(node_t, f"{path}.nodeAffinity.{req}.nodeSelectorTerms[{i}]")
        for i, node_w in enumerate(node.preferred_during_scheduling_ignored_during_execution or []):
            yield from node_term(node_w.preference, f"{path}.nodeAffinity.{pref}[{i}].preference")
    for name, pod in (
        ("podAffinity", affinity.pod_affinity),
        ("podAntiAffinity", affinity.pod_anti_affinity),
    ):
        if pod is None:
            continue
        for i, t in enumerate(pod.required_during_scheduling_ignored_during_execution or []):
            yield from pod_term(t, f"{path}.{name}.{req}[{i}]")
        for i, w in enumerate(pod.preferred_during_scheduling_ignored_during_execution or []):
            yield from pod_term(w.pod_affinity_term, f"{path}.{name}.{pref}[{i}].podAffinityTerm")


_GPU_RESOURCE_RULES = [
    {
        "rule": "!self.contains('kubernetes.io/')",
        "message": "must be an extended resource name, outside the kubernetes.io/ namespace",
    },
    {
        "rule": "!self.startsWith('requests.')",
        "message": "must be an extended resource name, without the requests. prefix",
    },
]


class Resources(ApiModel):
    gpu: int | None = Field(
        None,
        ge=0,
        le=16,
        description="GPUs requested (count of gpuResourceName); 0 = CPU only. Unset: 1 for "
        "bnb-*, gptq, awq and torchao-int4-weight, 0 for the others.",
    )
    gpu_resource_name: Annotated[
        str,
        Field(
            max_length=253,
            pattern=EXTENDED_RESOURCE_PATTERN,
            json_schema_extra=_cel(_GPU_RESOURCE_RULES),
        ),
    ] = Field(
        "nvidia.com/gpu",
        description="Extended resource name of the GPU: a domain-prefixed name "
        "(vendor.example/gpu), not in the kubernetes.io/ or requests. namespaces.",
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
    affinity: Affinity | None = Field(
        None, description="Pod affinity (core/v1 Affinity), copied into the Job's pod."
    )
    priority_class_name: Annotated[
        str, Field(max_length=253, pattern=OPTIONAL_DNS_SUBDOMAIN_PATTERN)
    ] = Field("", description="Pod priorityClassName (a DNS-1123 subdomain).")

    @model_validator(mode="after")
    def _placement(self) -> Resources:
        # Raised as ValueError inside pydantic; ``parse_spec`` turns it into InvalidSpecError
        # naming the same field as the CRD's rule.
        name, where = self.gpu_resource_name, "spec.resources.gpuResourceName"
        if "kubernetes.io/" in name:
            raise ValueError(f"{where}: {_GPU_RESOURCE_RULES[0]['message']}")
        if name.startswith("requests."):
            raise ValueError(f"{where}: {_GPU_RESOURCE_RULES[1]['message']}")
        for i, toleration in enumerate(self.tolerations):
            problem = toleration.problem()
            if problem:
                raise ValueError(f"spec.resources.tolerations[{i}].{problem[0]}: {problem[1]}")
        if self.affinity is not None:
            for field, message in _affinity_problems(self.affinity, "spec.resources.affinity"):
                raise ValueError(f"{field}: {message}")
        return self


class Cache(ApiModel):
    # A claim name is a DNS-1123 subdomain: never '..', '/' or '%', so it cannot leave its
    # path segment in the URLs and directories built from it.
    pvc_name: Annotated[str, Field(max_length=253, pattern=OPTIONAL_DNS_SUBDOMAIN_PATTERN)] = Field(
        "",
        description="PVC mounted as HF_HOME: a model download cache shared across runs (a "
        "DNS-1123 subdomain).",
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
    queue_name: Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)] = Field(
        "",
        description="Kueue LocalQueue (a label value): the Job is created suspended with the "
        "queue label.",
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
    "Reproducibility",
    "Resources",
    "Result",
    "TorchaoInt4Params",
    "parse_manifest",
    "parse_spec",
    "validate_method_params",
]
