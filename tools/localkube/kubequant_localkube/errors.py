"""Errors of the local control plane, shaped like the API server's Status objects."""

from __future__ import annotations

from typing import Any

from kubequant_api.errors import KubequantError

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class LocalKubeError(KubequantError):
    """Base of the local control plane's own errors (setup, process mode, CLI)."""


class ApiError(LocalKubeError):
    """An API request fails the way the real API server fails it: ``status`` and a Status body."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or _REASONS.get(status, "Unknown")
        self.details = details

    def to_status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.status,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(resource: str, group: str, name: str) -> ApiError:
    qual = f"{resource}.{group}" if group else resource
    return ApiError(
        404,
        f'{qual} "{name}" not found',
        details={"name": name, "group": group, "kind": resource},
    )


def already_exists(resource: str, group: str, name: str) -> ApiError:
    qual = f"{resource}.{group}" if group else resource
    return ApiError(
        409,
        f'{qual} "{name}" already exists',
        reason="AlreadyExists",
        details={"name": name, "group": group, "kind": resource},
    )


def conflict(resource: str, group: str, name: str, why: str) -> ApiError:
    qual = f"{resource}.{group}" if group else resource
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {qual} "{name}": {why}',
        reason="Conflict",
        details={"name": name, "group": group, "kind": resource},
    )


def invalid(kind: str, group: str, name: str, causes: list[dict[str, str]]) -> ApiError:
    """422 Invalid with one cause per failing field, like the API server's field errors."""
    qual = f"{kind}.{group}" if group else kind
    msgs = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    joined = msgs[0] if len(msgs) == 1 else "[" + ", ".join(msgs) + "]"
    return ApiError(
        422,
        f'{qual} "{name}" is invalid: {joined}',
        reason="Invalid",
        details={"name": name, "group": group, "kind": kind, "causes": causes},
    )
