"""Pure checks of a parsed spec that the CRD schema cannot express."""

from __future__ import annotations

from kubequant_api.errors import InvalidSpecError
from kubequant_api.methods import first_incompatibility
from kubequant_api.models import ModelOptimizationSpec


def compatibility_problem(spec: ModelOptimizationSpec) -> InvalidSpecError | None:
    """A planned method that cannot run on the declared task (task auto is left to the engine).

    The same check, with the same wording, as the engine's once it has read the model's task.
    """
    return first_incompatibility(spec.planned, spec.model.task)
