"""Typed config trees: nested dataclasses read from YAML, written back as plain YAML, changed by dotted keys.

One mechanism serves the reconstruction config (``recon3d.train.config``) and the generator config
(``recon3d.generation.config``). Each setting is a field of the dataclass that uses it, with its default
there; a tree is a dataclass whose fields are settings or sub-dataclasses (sections). A field may also be
a union of dataclasses that each name themselves with a ``kind`` class attribute (the densification
strategies): it reads and writes as ``{kind: mcmc, cap: ...}`` and accepts a bare kind name.

Keys are dotted paths (``strategy.cap``). A key without a dot may name a setting whose name only one
section has (``steps`` for ``run.steps``); a key the tree no longer has but a table of renamed keys knows
is mapped with a one-line ``RenamedConfigKey`` warning naming its new key. Fields whose metadata holds
``runtime=True`` are set by the code that uses the dataclass (a random generator, a scale of the training
frame): they are neither read nor written nor compared.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

# old key -> new dotted key, or a function of the tree choosing one (None: the old key means nothing here)
Renames = Mapping[str, "str | Callable[[Any], str | None]"]


class RenamedConfigKey(UserWarning):
    """A config key was renamed; the message names the new key (the old one still works)."""


def runtime(default: Any = None) -> Any:
    """A dataclass field set by code at run time, never read from or written to a config file."""
    return dataclasses.field(default=default, repr=False, compare=False, metadata={"runtime": True})


def settings(obj: Any) -> list[dataclasses.Field]:
    """The config fields of a dataclass (its runtime fields left out)."""
    return [f for f in dataclasses.fields(obj) if not f.metadata.get("runtime")]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _union_members(kind: Any) -> list[type]:
    """Dataclass members of a union type (empty for anything else)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)]
    return []


def _is_section(kind: Any) -> bool:
    return (isinstance(kind, type) and dataclasses.is_dataclass(kind)) or bool(_union_members(kind))


def _kind_name(cls: type) -> str:
    return cls.kind  # type: ignore[attr-defined]


def coerce(value: Any, kind: Any, key: str, source: str | Path | None) -> Any:
    """``value`` as the leaf type ``kind`` (bool, int, float, str, dict, list, optional ones); InputError if not."""
    if value is None:
        if type(None) in typing.get_args(kind):
            return None
        raise InputError(source, f"config key {key!r} cannot be null")
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
        origin = typing.get_origin(kind)
    if kind is dict or origin is dict:
        if not isinstance(value, dict):
            raise InputError(source, f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if kind is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise InputError(source, f"config key {key!r} must be a list, got {value!r}")
        return list(value)
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("true", "1", "yes")
            if not isinstance(value, (bool, int)):
                raise ValueError(value)
            return bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(value, (dict, list)):
            raise ValueError(value)
        return str(value)
    except (TypeError, ValueError):
        raise InputError(source, f"config key {key!r} expects {getattr(kind, '__name__', kind)}, got {value!r}") from None


def _new_member(members: list[type], name: str, key: str, source: str | Path | None, carry: Any = None) -> Any:
    """A fresh member of a union by its kind name; settings the old member shares with it carry over."""
    for cls in members:
        if _kind_name(cls) == name:
            if carry is None or type(carry) is cls:
                return carry if carry is not None else cls()
            shared = {f.name: getattr(carry, f.name) for f in settings(carry) if f.name in {g.name for g in settings(cls)}}
            return cls(**shared)
    kinds = ", ".join(_kind_name(c) for c in members)
    raise InputError(source, f"config key {key!r}: unknown kind {name!r}; choose one of {kinds}")


def from_mapping(cls: type, mapping: Mapping[str, Any], source: str | Path | None = None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping; unknown keys and wrong types raise InputError."""
    return update(cls(), mapping, source, prefix)


def update(obj: Any, mapping: Mapping[str, Any], source: str | Path | None = None, prefix: str = "") -> Any:
    """A copy of dataclass ``obj`` with the nested ``mapping`` applied (sections merge, settings replace)."""
    if not isinstance(mapping, Mapping):
        raise InputError(source, f"config section {prefix.rstrip('.') or '(top)'!r} must be a mapping, got {mapping!r}")
    hints = _hints(type(obj))
    names = {f.name for f in settings(obj)}
    changes: dict[str, Any] = {}
    for key, value in mapping.items():
        if key == "kind" and hasattr(type(obj), "kind"):
            if value != _kind_name(type(obj)):
                raise InputError(source, f"config key {prefix + key!r}: {value!r} here is a {_kind_name(type(obj))!r}")
            continue
        if key not in names:
            known = ", ".join(prefix + n for n in sorted(names))
            raise InputError(source, f"unknown config key {prefix + key!r}; known keys: {known}")
        changes[key] = _value_for(getattr(obj, key), hints[key], value, prefix + key, source)
    return dataclasses.replace(obj, **changes) if changes else dataclasses.replace(obj)


def _value_for(current: Any, kind: Any, value: Any, key: str, source: str | Path | None) -> Any:
    members = _union_members(kind)
    if members:
        if isinstance(value, str):
            return _new_member(members, value, key, source, carry=current)
        if isinstance(value, Mapping):
            name = value.get("kind", _kind_name(type(current)))
            base = _new_member(members, str(name), key + ".kind", source, carry=current)
            return update(base, {k: v for k, v in value.items() if k != "kind"}, source, key + ".")
        kinds = ", ".join(_kind_name(c) for c in members)
        raise InputError(source, f"config key {key!r} takes a kind ({kinds}) or a mapping, got {value!r}")
    if dataclasses.is_dataclass(kind):
        return update(current, value, source, key + ".")
    return coerce(value, kind, key, source)


def to_mapping(obj: Any) -> dict[str, Any]:
    """The tree as nested plain dicts (a union member leads with its ``kind``)."""
    out: dict[str, Any] = {}
    if hasattr(type(obj), "kind"):
        out["kind"] = _kind_name(type(obj))
    for f in settings(obj):
        value = getattr(obj, f.name)
        out[f.name] = to_mapping(value) if dataclasses.is_dataclass(value) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_yaml(obj: Any) -> str:
    """The tree as YAML, sections in field order."""
    return yaml.safe_dump(to_mapping(obj), sort_keys=False)


def leaf_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every setting in the tree (for messages and for the short form of keys)."""
    keys = [prefix + "kind"] if hasattr(type(obj), "kind") else []
    for f in settings(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys.append(prefix + f.name)  # a section may be set whole (a strategy by its kind)
            keys += leaf_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def resolve_key(obj: Any, key: str, renames: Renames | None = None, source: str | Path | None = None) -> str:
    """The dotted key that ``key`` names in the tree ``obj``: itself, a unique setting name, or a renamed key."""
    key = key.strip().replace("-", "_")
    keys = leaf_keys(obj)
    if key in keys:
        return key
    if "." not in key:
        matches = [k for k in keys if k.rsplit(".", 1)[-1] == key]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InputError(source, f"config key {key!r} is ambiguous; say which: {', '.join(matches)}")
    new = (renames or {}).get(key)
    if callable(new):
        new = new(obj)
    if new:
        warnings.warn(f"config key {key!r} is now {new!r}", RenamedConfigKey, stacklevel=3)
        return new
    raise InputError(source, f"unknown config key {key!r}; known keys: {', '.join(keys)}")


def set_key(obj: Any, key: str, value: Any, source: str | Path | None = None) -> Any:
    """A copy of the tree with the setting (or section) at dotted ``key`` replaced by ``value``."""
    head, _, rest = key.partition(".")
    nested: Any = value
    for part in reversed(rest.split(".") if rest else []):
        nested = {part: nested}
    return update(obj, {head: nested}, source)


def apply(obj: Any, overrides: Mapping[str, Any] | None = None, assignments: list[str] | None = None,
          renames: Renames | None = None) -> Any:
    """A copy of the tree with ``overrides`` (key -> value) and ``assignments`` ("key=value", YAML values)."""
    out = obj
    for key, value in (overrides or {}).items():
        out = set_key(out, resolve_key(out, key, renames, "override"), value, "override")
    for text in assignments or []:
        if "=" not in text:
            raise InputError(None, f"--set expects key=value, got {text!r}")
        key, raw = text.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        source = f"--set {text}"
        out = set_key(out, resolve_key(out, key, renames, source), value, source)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (empty file: {}); InputError naming the file otherwise."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "no such config file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(path, f"invalid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, "a config file must hold a mapping of key: value")
    return data
