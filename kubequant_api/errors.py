"""Domain errors shared by the operator and the engine."""

from __future__ import annotations


class KubequantError(Exception):
    """Base of every error kubequant raises on purpose."""


class InvalidSpecError(KubequantError, ValueError):
    """A spec (or a file it points at) is wrong; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
