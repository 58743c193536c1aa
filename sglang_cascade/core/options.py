"""One way to turn user options into a policy's config dataclass.

Every factory, CLI flag and plugin option goes through :func:`config_from_options`, so an option's key is
always the name of a config field, typed by that field's annotation:

    >>> config_from_options(LeastLoadConfig, {"kv_weight": "0.5"})      # doctest: +SKIP
    LeastLoadConfig(kv_weight=0.5)

Configs may nest dataclasses (a scheduler config holding its admission / aligned / offload parts); their
leaf fields are then set by their own name, which must be unique across the tree. Text options
(``"pipelining=0,aligned=1"``) are parsed by :func:`parse_options_text`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_scalar(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, anything else stays a string."""
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def parse_options_text(text: str | None, *, what: str = "options") -> dict[str, Any]:
    """``"pipelining=0,aligned=1"`` -> ``{"pipelining": 0, "aligned": 1}`` (numbers parsed, the rest strings).

    Raises ValueError naming ``what`` for an item that is not ``key=value``."""
    out: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{what}: item {item!r} is not key=value")
        out[key.strip()] = parse_scalar(value)
    return out


def split_name(name: str) -> tuple[str, dict[str, Any]]:
    """``"cascade:pipelining=0,aligned=1"`` -> ``("cascade", {"pipelining": 0, "aligned": 1})``."""
    base, _, rest = name.partition(":")
    return base, parse_options_text(rest, what=f"options of {base!r}")


def _leaf_fields(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, tuple[tuple[str, ...], Any]]:
    """Leaf field name -> (path of nested field names, annotation)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[tuple[str, ...], Any]] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, f.type)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            for name, spec in _leaf_fields(tp, prefix + (f.name,)).items():
                if name in out:
                    raise TypeError(f"{cls.__name__}: option {name!r} is defined twice in nested configs")
                out[name] = spec
        else:
            if f.name in out:
                raise TypeError(f"{cls.__name__}: option {f.name!r} is defined twice in nested configs")
            out[f.name] = (prefix + (f.name,), tp)
    return out


def option_names(cls: type) -> list[str]:
    """The option keys ``cls`` accepts (its leaf field names)."""
    return sorted(_leaf_fields(cls))


def coerce(value: Any, tp: Any, *, key: str = "value") -> Any:
    """Convert ``value`` to the annotated type ``tp`` (bool from 0/1/true/false; Optional; unions of
    scalars). Values the annotation does not describe (``Any``, objects) pass unchanged."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.strip().lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key=key)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"option {key!r}: cannot use {value!r} ({'; '.join(errors)})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"option {key!r} takes 0/1 (or true/false), not {value!r}")
    if tp is int:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"option {key!r} takes an integer, not {value!r}")
        try:
            return int(value) if not isinstance(value, str) else int(parse_scalar(value))
        except (TypeError, ValueError):
            raise ValueError(f"option {key!r} takes an integer, not {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"option {key!r} takes a number, not {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"option {key!r} takes a string, not {value!r}")
        return str(value)
    return value


def shared_options(src: Any, cls: type) -> dict[str, Any]:
    """The fields of the dataclass instance ``src`` that are also option keys of ``cls``: a config passes its
    settings on to the config of a part it builds by name (one name, one meaning), never by a renaming table."""
    keys = set(_leaf_fields(cls))
    return {f.name: getattr(src, f.name) for f in dataclasses.fields(src) if f.name in keys}


def config_from_options(
    cls: type, options: Mapping[str, Any] | None = None, *, base: Any = None, what: str | None = None
) -> Any:
    """Build ``cls`` (a dataclass, possibly with nested dataclasses) from ``options`` whose keys are its
    (leaf) field names; values are converted to the fields' annotated types. ``base``: an instance to start
    from instead of the defaults. Unknown keys raise ValueError listing the valid ones."""
    options = dict(options or {})
    leaves = _leaf_fields(cls)
    unknown = sorted(set(options) - set(leaves))
    if unknown:
        label = what or cls.__name__
        raise ValueError(f"unknown option(s) {unknown} for {label}; valid: {sorted(leaves)}")
    grouped: dict[tuple[str, ...], dict[str, Any]] = {}
    for key, value in options.items():
        path, tp = leaves[key]
        grouped.setdefault(path[:-1], {})[path[-1]] = coerce(value, tp, key=key)
    obj = base if base is not None else cls()
    return _replace_nested(obj, (), grouped)


def _replace_nested(obj: Any, prefix: tuple[str, ...], grouped: dict[tuple[str, ...], dict[str, Any]]) -> Any:
    changes = dict(grouped.get(prefix, {}))
    for f in dataclasses.fields(obj):
        sub = getattr(obj, f.name)
        if dataclasses.is_dataclass(sub) and not isinstance(sub, type):
            path = prefix + (f.name,)
            if any(p[: len(path)] == path for p in grouped):
                changes[f.name] = _replace_nested(sub, path, grouped)
    return dataclasses.replace(obj, **changes) if changes else obj
