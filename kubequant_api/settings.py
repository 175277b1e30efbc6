"""The one settings loader of every component, built on pydantic-settings.

A component declares its settings as a subclass of :class:`KubequantSettings` and loads them
with :meth:`KubequantSettings.from_environment`. Precedence: environment variable > YAML config
file (``KUBEQUANT_CONFIG_FILE``) > default. Field ``x`` is read from ``KUBEQUANT_X`` unless
it is annotated with :class:`Env` (``Annotated[int, Env("KUBEQUANT_ENGINE_METRICS_PORT")]``).
The config file is a mapping whose keys are the environment names or the field names (the
environment name wins when a file has both).

A value that cannot be used raises the component's own error (:meth:`settings_error`), which
names the variable and, for a value from the file, the file. Constructing a subclass directly
(``Settings(engine_image=...)``) reads neither the environment nor the file: only the values
given and the defaults, validated the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Self

import yaml
from pydantic import ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUseDefault
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from kubequant_api.errors import KubequantError

ENV_PREFIX: Final = "KUBEQUANT_"
CONFIG_FILE_ENV: Final = "KUBEQUANT_CONFIG_FILE"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Env:
    """Field metadata: the environment variable of a field not named ``KUBEQUANT_<FIELD>``."""

    name: str


@dataclass(frozen=True)
class _Request:
    """What :meth:`KubequantSettings.from_environment` is loading from."""

    env: Mapping[str, str]
    config_file: Path | None


_REQUEST: ContextVar[_Request | None] = ContextVar("kubequant_settings_request", default=None)


def port_number(value: int) -> int:
    """``value`` when it is a TCP port number (0 included: "any free port" or "none")."""
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535)")
    return value


class KubequantSettings(BaseSettings):
    """Base of the operator's and the engine's settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=True,
        frozen=True,
        extra="forbid",
        validate_default=False,
        use_attribute_docstrings=True,
    )

    empty_is_unset: ClassVar[bool] = False
    """True: a variable or file value that is empty counts as not set (the next source, then
    the default, applies). False: an empty variable is a value (``""``, ``()`` or None)."""
    reject_unknown_file_keys: ClassVar[bool] = False
    """True: a config file key that names no setting is an error (a typo is not ignored)."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise type(self)._typed_error(exc) from exc

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, validated like a fresh load."""
        return type(self)(**{**self.model_dump(), **changes})

    # ------------------------------------------------------------------ the component's error

    @classmethod
    def settings_error(cls, variable: str, message: str) -> KubequantError:
        """The component's error for a setting that cannot be used; names ``variable``."""
        return KubequantError(f"{variable}: {message}")

    # ------------------------------------------------------------------ names

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable that sets ``field_name``."""
        for meta in cls.model_fields[field_name].metadata:
            if isinstance(meta, Env):
                return meta.name
        return f"{cls.model_config.get('env_prefix', '')}{field_name.upper()}"

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Environment variable name of every field (for documentation and tests)."""
        return {name: cls.env_name(name) for name in cls.model_fields}

    @classmethod
    def documented(cls) -> tuple[tuple[str, str, str, str], ...]:
        """``(variable, field, default as documented, meaning)`` of every field."""
        rows = []
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            shown = extra.get("documented_default")
            if shown is None:
                shown = "unset" if info.default in (None, "") else str(info.default)
            rows.append((cls.env_name(name), name, str(shown), info.description or ""))
        return tuple(rows)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Self:
        """Settings from ``env`` (default ``os.environ``), the config file and the defaults.

        The config file is ``config_file``, else ``$KUBEQUANT_CONFIG_FILE`` (none when unset).
        """
        environ = os.environ if env is None else env
        path = config_file or environ.get(CONFIG_FILE_ENV, "")
        token = _REQUEST.set(_Request(environ, Path(path) if path else None))
        try:
            return cls()
        finally:
            _REQUEST.reset(token)

    @staticmethod
    def source_env() -> Mapping[str, str]:
        """The environment being loaded from (``os.environ`` outside a load): for defaults
        derived from other variables."""
        request = _REQUEST.get()
        return os.environ if request is None else request.env

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Direct construction: the given values only. A load: environment > config file."""
        del env_settings, dotenv_settings, file_secret_settings
        request = _REQUEST.get()
        if request is None:
            return (init_settings,)
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSource(cls, request.env)]
        if request.config_file is not None:
            sources.append(_ConfigFileSource(cls, request.config_file))
        return tuple(sources)

    @field_validator("*", mode="before")
    @classmethod
    def _normalise(cls, value: Any, info: ValidationInfo) -> Any:
        """Strip strings, let a number stand for a string, and apply :attr:`empty_is_unset`."""
        if isinstance(value, str):
            value = value.strip()
        field = cls.model_fields[info.field_name] if info.field_name else None
        if cls.empty_is_unset and value in (None, ""):
            if field is not None and field.default_factory is None and field.default in (None, ""):
                return field.default  # the default itself (validated: validate_default)
            raise PydanticUseDefault
        if (
            field is not None
            and field.annotation is str
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            return str(value)
        return value

    # ------------------------------------------------------------------ errors

    @classmethod
    def _typed_error(cls, exc: ValidationError) -> KubequantError:
        """The component's error for the first thing pydantic refused."""
        error = exc.errors()[0]
        loc = error.get("loc") or ()
        field = str(loc[0]) if loc else ""
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if field not in cls.model_fields:
            return cls.settings_error(field or cls.__name__, message)
        variable = cls.env_name(field)
        where = ""
        request = _REQUEST.get()
        if (
            request is not None
            and request.config_file is not None
            and not _present(request.env, variable, cls.empty_is_unset)
        ):
            where = f" (from {request.config_file})"
        raw = error.get("input")
        return cls.settings_error(variable, f"cannot use {raw!r} for {field}{where}: {message}")


def _present(env: Mapping[str, str], name: str, empty_is_unset: bool) -> bool:
    value = env.get(name)
    return value is not None and not (empty_is_unset and value.strip() == "")


class _EnvSource(PydanticBaseSettingsSource):
    """The variables of one environment mapping, by exact (case-sensitive) name."""

    def __init__(self, settings_cls: type[KubequantSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._cls = settings_cls
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = self._cls.env_name(field_name)
        if not _present(self._env, name, self._cls.empty_is_unset):
            return None, name, False
        return self._env[name], name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name, field in self._cls.model_fields.items():
            value, _, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[field_name] = value
        return values


class _ConfigFileSource(YamlConfigSettingsSource):
    """The YAML config file. Unlike pydantic-settings' own, a missing, unreadable or
    non-mapping file is an error, and keys may be environment names or field names."""

    def __init__(self, settings_cls: type[KubequantSettings], path: Path) -> None:
        self._cls = settings_cls
        self._path = path
        if not path.is_file():
            # pydantic-settings skips a missing file; a configured one must be there.
            self._read_file(path)
        super().__init__(settings_cls, yaml_file=path)

    def _error(self, message: str) -> KubequantError:
        return self._cls.settings_error(CONFIG_FILE_ENV, message)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = yaml.safe_load(Path(file_path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise self._error(f"cannot read {self._path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise self._error(f"{self._path} is not valid YAML: {exc}") from exc
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise self._error(f"{self._path} must hold a mapping of settings")
        names = self._cls.env_names()
        known = set(names) | set(names.values())
        unknown = sorted(str(k) for k in data if str(k) not in known)
        if unknown and self._cls.reject_unknown_file_keys:
            raise self._error(f"unknown keys {unknown}; known: {sorted(names)}")
        values: dict[str, Any] = {}
        for field_name, variable in names.items():
            if variable in data:
                values[field_name] = data[variable]
            elif field_name in data:
                values[field_name] = data[field_name]
        return values
