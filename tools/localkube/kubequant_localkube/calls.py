"""The request log and fault injection of the emulator: each API call as RBAC sees it."""

from __future__ import annotations

import dataclasses
from typing import Any

from kubequant_localkube import rbac


@dataclasses.dataclass
class ApiCall:
    """One API request as RBAC sees it (``code``: the HTTP status answered)."""

    verb: str  # get list watch create update patch delete deletecollection
    group: str
    version: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    user_agent: str = ""
    code: int = 0
    user: str = "admin"  # who it was authorized as (a pod's ServiceAccount, an impersonated user)

    @property
    def rbac_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def allowed_by(self, rules: list[dict[str, Any]]) -> bool:
        """Whether RBAC ``rules`` (a Role's or ClusterRole's) permit this call: the real
        authorizer's RuleAllows, through :func:`.rbac.allows` (the one matcher)."""
        return rbac.allows(rules, self.verb, self.group, self.rbac_resource, self.name)


@dataclasses.dataclass
class Fault:
    """Fail the next ``count`` requests matching verb/resource (and optionally more)."""

    verb: str
    resource: str
    count: int
    status: int = 500
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    message: str = "injected failure"

    def matches(self, call: ApiCall) -> bool:
        return (
            self.count > 0
            and self.verb in (call.verb, "*")
            and self.resource in (call.resource, "*")
            and (self.subresource is None or self.subresource == call.subresource)
            and (self.namespace is None or self.namespace == call.namespace)
            and (self.name is None or self.name == call.name)
        )
