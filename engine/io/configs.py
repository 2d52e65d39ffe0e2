"""One JSON round trip for every frozen dataclass config of the engine.

Configs are saved next to checkpoints and read back on resume, so they must refuse unknown keys (a typo
would otherwise silently fall back to a default) and turn JSON lists back into the tuples the dataclasses
hold. Nested config fields (a dataclass inside a dataclass) are rebuilt recursively.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from ..errors import ConfigError

C = TypeVar("C", bound="JsonConfig")


def _is_tuple_type(tp: Any) -> bool:
    """True for ``tuple[...]`` annotations, also inside ``X | None``."""
    origin = typing.get_origin(tp)
    if tp is tuple or origin is tuple:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple_type(arg) for arg in typing.get_args(tp))
    return False


class JsonConfig:
    """Mixin for frozen dataclass configs: ``to_dict``/``to_json``/``from_dict``/``replace``.

    Subclasses set ``config_label`` (used in error messages) and may override ``validate``.
    """

    config_label: typing.ClassVar[str] = "config"

    def validate(self: C) -> C:
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes).validate()

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a (JSON) dict: unknown keys are an error, lists become tuples, missing keys default."""
        if not isinstance(data, dict):
            raise ConfigError(f"a {cls.config_label} config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        if unknown:
            raise ConfigError(f"unknown {cls.config_label} config keys: {sorted(unknown)}")
        hints = typing.get_type_hints(cls)
        for name, value in data.items():
            hint = hints[name]
            if isinstance(hint, type) and issubclass(hint, JsonConfig):
                if isinstance(value, dict):
                    data[name] = hint.from_dict(value)
            elif _is_tuple_type(hint) and value is not None and not isinstance(value, tuple):
                try:
                    data[name] = tuple(value)
                except TypeError:
                    raise ConfigError(f"{cls.config_label}.{name} must be a list, got {value!r}") from None
        try:
            return cls(**data).validate()
        except TypeError as exc:  # e.g. a nested value of the wrong kind
            raise ConfigError(f"invalid {cls.config_label} config: {exc}") from None
