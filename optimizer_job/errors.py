"""The engine's own failures, below every other engine module (methods, loading, pipeline)."""

from __future__ import annotations

from kubequant_api.errors import KubequantError


class MethodError(KubequantError):
    """A method failed in a way that retrying may fix (exit code 1)."""


class IncompatibleError(KubequantError):
    """The method cannot handle this model/task (invalid spec: exit code 2)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
