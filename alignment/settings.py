"""Shared machinery for settings dataclasses: validation helpers, YAML recipes and ``--set key=value`` overrides.

Every settings class in the project is a dataclass whose fields carry ``metadata={"help": ...}`` and that
validates itself in ``__post_init__``, raising :class:`SettingsError` with a message that says what to change.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message names the field and what to use instead."""


def validate_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise SettingsError(f"{name} is {value!r}; use one of: {', '.join(map(str, choices))}.")


def validate_range(name: str, value: float, low: float | None = None, high: float | None = None,
                   low_inclusive: bool = True, high_inclusive: bool = True) -> None:
    if value is None:
        raise SettingsError(f"{name} is missing.")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        bound = ">=" if low_inclusive else ">"
        raise SettingsError(f"{name} is {value}; it must be {bound} {low}.")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        bound = "<=" if high_inclusive else "<"
        raise SettingsError(f"{name} is {value}; it must be {bound} {high}.")


def field_help(cls: type) -> dict[str, str]:
    """Field name -> help text, for CLI --help and UI info text."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert YAML/CLI values to the field's declared type where that is unambiguous."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation.split("|")[0].strip(),
                                                                             None)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(name, value, non_none[0])
        return value
    if annotation is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError as exc:
            raise SettingsError(f"{name} must be a number, got {value!r}.") from exc
    if annotation is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError as exc:
            raise SettingsError(f"{name} must be a whole number, got {value!r}.") from exc
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if annotation is bool and isinstance(value, str):
        lowered = value.lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise SettingsError(f"{name} must be true or false, got {value!r}.")
    return value


def from_dict(cls: type[T], values: Mapping[str, Any], source: str = "settings") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys with the list of known ones."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingsError(
            f"{source}: unknown setting(s) {', '.join(unknown)}. Known settings: {', '.join(sorted(known))}."
        )
    hints = typing.get_type_hints(cls)
    coerced = {k: _coerce(k, v, hints.get(k, known[k].type)) for k, v in values.items()}
    try:
        return cls(**coerced)
    except TypeError as exc:
        raise SettingsError(f"{source}: {exc}") from exc


def load_yaml(cls: type[T], path: str | Path, overrides: Iterable[str] = ()) -> T:
    """Load a recipe (YAML of ``cls`` field names), then apply ``key=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"Recipe {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"Recipe {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"Recipe {path} must be a mapping of setting names to values.")
    data.update(parse_overrides(overrides))
    return from_dict(cls, data, source=str(path))


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as YAML scalars (numbers, booleans, lists)."""
    result: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SettingsError(f"--set {item!r} must look like key=value.")
        key, raw = item.split("=", 1)
        try:
            result[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            result[key.strip()] = raw
    return result


def to_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def save_yaml(settings: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(settings), sort_keys=False), encoding="utf-8")
