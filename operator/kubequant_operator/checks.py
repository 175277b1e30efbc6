"""Pure checks of a parsed spec that the CRD schema cannot express.

Two kinds: the task/method compatibility the engine would refuse (:func:`compatibility_problem`)
and the operator's policy, what a user who may create a ModelOptimization may ask of the
cluster (:func:`policy_problem`, settings in :mod:`.settings`, docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kubequant_api.constants import Reason
from kubequant_api.errors import InvalidSpecError
from kubequant_api.methods import first_incompatibility
from kubequant_api.models import ModelOptimizationSpec, NodeSelectorTerm
from kubequant_operator.settings import Settings

# The labels and taints that mark control-plane nodes (kubeadm sets the first; the second is
# the name before Kubernetes 1.24, still used by some distributions).
CONTROL_PLANE_KEYS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
# The built-in PriorityClasses of the system's own critical pods (scheduling.k8s.io).
SYSTEM_PRIORITY_CLASSES = ("system-node-critical", "system-cluster-critical")
ANY = "*"
PREFIX_ENDS = ("/", ":", "@")


def compatibility_problem(spec: ModelOptimizationSpec) -> InvalidSpecError | None:
    """A planned method that cannot run on the declared task (task auto is left to the engine).

    The same check, with the same wording, as the engine's once it has read the model's task.
    """
    return first_incompatibility(spec.planned, spec.model.task)


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class PolicyRefusal:
    """What the operator's policy refuses: the reason, and a message that names the spec
    field and the setting that would allow it."""

    reason: Reason
    message: str


def image_allowed(image: str, s: Settings) -> bool:
    """``image`` is the engine image, or matches ``allowed_images`` (an entry ending in '/',
    ':' or '@' is a prefix, any other must equal it, '*' matches everything)."""
    if image == s.engine_image:
        return True
    for entry in s.allowed_images:
        if entry in (ANY, image):
            return True
        if entry.endswith(PREFIX_ENDS) and image.startswith(entry):
            return True
    return False


def priority_class_allowed(name: str, s: Settings) -> bool:
    """``name`` is listed, or '*' is listed and it is not a system class."""
    if name in s.allowed_priority_classes:
        return True
    return ANY in s.allowed_priority_classes and name not in SYSTEM_PRIORITY_CLASSES


def _control_plane_expressions(spec: ModelOptimizationSpec) -> Iterator[tuple[str, str]]:
    """(field, key) of each node-affinity expression that selects control-plane nodes."""
    affinity = spec.resources.affinity
    node = affinity.node_affinity if affinity is not None else None
    if node is None:
        return
    terms: list[tuple[str, NodeSelectorTerm]] = []
    required = node.required_during_scheduling_ignored_during_execution
    if required is not None:
        field = "spec.resources.affinity.nodeAffinity.requiredDuringScheduling"
        field += "IgnoredDuringExecution.nodeSelectorTerms"
        terms.extend((f"{field}[{i}]", t) for i, t in enumerate(required.node_selector_terms))
    preferred = node.preferred_during_scheduling_ignored_during_execution or []
    field = "spec.resources.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution"
    terms.extend((f"{field}[{i}].preference", p.preference) for i, p in enumerate(preferred))
    for where, term in terms:
        for i, req in enumerate(term.match_expressions or []):
            if req.key in CONTROL_PLANE_KEYS and req.operator in ("In", "Exists"):
                yield f"{where}.matchExpressions[{i}]", req.key


def placement_problem(spec: ModelOptimizationSpec, s: Settings) -> str | None:
    """Tolerations and node selection the policy refuses, naming the field and the setting."""
    res = spec.resources
    for i, t in enumerate(res.tolerations):
        where = f"spec.resources.tolerations[{i}]"
        if not t.key and t.operator == "Exists" and not s.allow_tolerate_all:
            return (
                f"{where}: operator Exists with no key tolerates every taint; not allowed by "
                "the operator's policy (setting KUBEQUANT_ALLOW_TOLERATE_ALL)"
            )
        if t.key in CONTROL_PLANE_KEYS and not s.allow_control_plane:
            return (
                f"{where}: tolerates the control-plane taint {t.key}; not allowed by the "
                "operator's policy (setting KUBEQUANT_ALLOW_CONTROL_PLANE)"
            )
    if not s.allow_control_plane:
        for key in res.node_selector:
            if key in CONTROL_PLANE_KEYS:
                return (
                    f"spec.resources.nodeSelector: {key} selects control-plane nodes; not "
                    "allowed by the operator's policy (setting KUBEQUANT_ALLOW_CONTROL_PLANE)"
                )
        for where, key in _control_plane_expressions(spec):
            return (
                f"{where}: {key} selects control-plane nodes; not allowed by the operator's "
                "policy (setting KUBEQUANT_ALLOW_CONTROL_PLANE)"
            )
    return None


def policy_problem(spec: ModelOptimizationSpec, s: Settings) -> PolicyRefusal | None:
    """The first thing the spec asks that the operator's policy settings refuse."""
    if spec.image and not image_allowed(spec.image, s):
        return PolicyRefusal(
            Reason.IMAGE_NOT_ALLOWED,
            f"spec.image: {spec.image!r} is not the engine image ({s.engine_image}) and not "
            "allowed by the operator's policy (setting KUBEQUANT_ALLOWED_IMAGES: "
            f"{', '.join(s.allowed_images) or 'empty'})",
        )
    pc = spec.resources.priority_class_name
    if pc and not priority_class_allowed(pc, s):
        system = pc in SYSTEM_PRIORITY_CLASSES
        why = "a system PriorityClass, allowed only when listed by name" if system else "not listed"
        listed = ", ".join(s.allowed_priority_classes) or "empty"
        return PolicyRefusal(
            Reason.PRIORITY_CLASS_NOT_ALLOWED,
            f"spec.resources.priorityClassName: {pc!r} is {why} (setting "
            f"KUBEQUANT_ALLOWED_PRIORITY_CLASSES: {listed})",
        )
    placement = placement_problem(spec, s)
    if placement is not None:
        return PolicyRefusal(Reason.PLACEMENT_NOT_ALLOWED, placement)
    return None
