"""Pure checks of a parsed spec that the CRD schema cannot express."""

from __future__ import annotations

from kubequant_api.constants import Task
from kubequant_api.errors import InvalidSpecError
from kubequant_api.models import CALIBRATED_METHODS, ModelOptimizationSpec

# Methods that only quantize causal language models (they calibrate on next-token loss).
CAUSAL_LM_ONLY: frozenset[str] = CALIBRATED_METHODS


def compatibility_problem(spec: ModelOptimizationSpec) -> InvalidSpecError | None:
    """A method that cannot run on the declared task (task auto is left to the engine)."""
    task = str(spec.model.task)
    if task in (Task.AUTO, Task.CAUSAL_LM):
        return None
    if spec.method == "auto":
        methods: list[tuple[str, str]] = [
            (f"spec.candidates[{i}].method", str(c.method))
            for i, c in enumerate(spec.candidates or [])
        ]
    else:
        methods = [("spec.method", str(spec.method))]
    for field, method in methods:
        if method in CAUSAL_LM_ONLY:
            return InvalidSpecError(
                field,
                f"method {method} quantizes causal language models only, but spec.model.task "
                f"is {task}; use causal-lm models or a method such as torchao-int8-weight",
            )
    return None
