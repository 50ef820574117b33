"""Frozen dataclass configs built from nested dicts (JSON files, model files), every value checked against
its field's annotation first, so that a wrong type is an error naming its dotted path, not a crash later."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(path: str, annotation: Any, value: Any) -> Any:
    """`value` as the type `annotation` names (int -> float, list -> tuple), or ValueError naming `path`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in (a for a in options if a is not type(None)):
            try:
                return coerce(path, option, value)
            except ValueError:
                pass
        raise ValueError(f"{path} must be {_type_name(annotation)}, got {value!r}")
    if typing.get_origin(annotation) is tuple:
        (item, *_), good = typing.get_args(annotation), isinstance(value, (list, tuple))
        if not good:
            raise ValueError(f"{path} must be {_type_name(annotation)}, got {value!r}")
        return tuple(coerce(f"{path}[{i}]", item, v) for i, v in enumerate(value))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (bool, int, float, str):
        if type(value) is not annotation:
            raise ValueError(f"{path} must be {_type_name(annotation)}, got {value!r}")
        return value
    return value


def _type_name(annotation: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             type(None): "null"}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return "a list of integers" if item is int else f"a list of {_type_name(item)} values"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def flatten(cls: type, tree: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A nested partial dict of `cls` (as in a JSON file) -> {dotted path: value}; unknown keys and
    non-objects given for nested configs are ValueErrors naming them. Dotted keys pass through."""
    types_ = field_types(cls)
    out: dict[str, Any] = {}
    for key, value in tree.items():
        head, _, rest = key.partition(".")
        path = where + key
        if head not in types_:
            scope = f" of {where.rstrip('.')}" if where else ""
            raise ValueError(f"unknown config key {path!r}; valid keys{scope}: {', '.join(types_)}")
        annotation = types_[head]
        if rest:
            if not is_config(annotation):
                raise ValueError(f"unknown config key {path!r}: {where + head} has no fields")
            out.update(flatten(annotation, {rest: value}, f"{where}{head}."))
        elif is_config(annotation) and isinstance(value, dict):
            out.update(flatten(annotation, value, path + "."))
        elif is_config(annotation) and not isinstance(value, annotation):
            raise ValueError(f"config key {path!r} must be a JSON object, got {value!r}")
        else:
            out[path] = value
    return out


def from_tree(cls: type, tree: dict[str, Any], where: str = "") -> Any:
    """A `cls` built from a nested dict (e.g. `to_dict()` output): fields it leaves out take the defaults
    of their own dataclass; unknown keys and ill-typed values are ValueErrors naming their path."""
    flatten(cls, tree, where)  # names unknown keys, and nested configs given as non-objects
    types_ = field_types(cls)

    def build(key: str, value: Any) -> Any:
        annotation = types_[key]
        if not is_config(annotation):
            return coerce(where + key, annotation, value)
        return value if isinstance(value, annotation) else from_tree(annotation, value, f"{where}{key}.")

    return cls(**{k: build(k, v) for k, v in tree.items()})
