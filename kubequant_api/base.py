"""The base of every API model: camelCase on the wire, snake_case in Python.

It sits below both :mod:`kubequant_api.methods` (the method table and its params models) and
:mod:`kubequant_api.models` (the spec and status), so neither has to import the other's
module to define a model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


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


def field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    """``prefix`` and a pydantic error location as the API names it (camelCase, dotted)."""
    return ".".join([prefix, *(to_camel(str(p)) for p in loc)]) if loc else prefix
