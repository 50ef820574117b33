"""Command-line flags generated from frozen dataclass configs, and the merge preset < JSON file < flags.

Every field becomes a flag named by its path (`--world-model.denoiser.width`), typed from its
annotation and explained by the field's docstring (or trailing comment), so `--help` documents every
option and a new config field needs no CLI change. Flags default to "not given", which is what lets
an explicit flag override a config file that overrides the preset.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

FLAG_PREFIX = "config:"
"""Namespace attributes of generated flags start with this, to tell them from other options."""


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One leaf field: its dotted path (`world_model.denoiser.width`), parser and documentation."""

    path: str
    parse: Callable[[str], Any]
    metavar: str
    doc: str

    @property
    def flag(self) -> str:
        return "--" + self.path.replace("_", "-")


# ---- documentation ------------------------------------------------------------------------------------
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its documentation: the string literal after it, else its trailing `#` comment, else
    the `#` comment lines right above it. Cached: parsing source is the slow part of building a parser."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        nxt = body[i + 1] if i + 1 < len(body) else None
        is_literal = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
        literal = nxt.value.value if is_literal else None  # type: ignore[union-attr]
        if isinstance(literal, str):
            docs[node.target.id] = " ".join(literal.split())
        else:
            docs[node.target.id] = _comment_doc(comments, node.lineno, node.end_lineno or node.lineno)
    return docs


def _comment_doc(comments: dict[int, str], first: int, last: int) -> str:
    """The comment ending line `last`, else the block of comment lines just above line `first`."""
    if comments.get(last):
        return comments[last]
    above: list[str] = []
    line = first - 1
    while line in comments:
        above.insert(0, comments[line])
        line -= 1
    return " ".join(above)


# ---- types ----------------------------------------------------------------------------------------------
def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None


def _parser_for(annotation: Any) -> tuple[Callable[[str], Any], str]:
    """A str -> value parser and a metavar for a field annotation; `X | None` also accepts "none"."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner, metavar = _parser_for(rest[0]) if len(rest) == 1 else (parse_json, "JSON")

        def optional(text: str) -> Any:
            return None if text.strip().lower() in ("none", "null") else inner(text)

        return optional, f"{metavar}|none"
    simple: dict[Any, tuple[Callable[[str], Any], str]] = {
        bool: (parse_bool, "{true,false}"), int: (int, "INT"), float: (float, "FLOAT"), str: (str, "STR"),
    }
    return simple.get(annotation, (parse_json, "JSON"))


def is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def leaf_fields(cls: type, prefix: str = "") -> Iterator[FieldInfo]:
    """Every non-dataclass field of `cls`, depth first, nested configs flattened into dotted paths."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        path = prefix + f.name
        if is_config(annotation):
            yield from leaf_fields(annotation, path + ".")
        else:
            parse, metavar = _parser_for(annotation)
            yield FieldInfo(path, parse, metavar, docs.get(f.name, ""))


def nested_configs(cls: type, prefix: str = "") -> Iterator[tuple[str, type]]:
    """(dotted prefix, dataclass) of `cls` and every config nested in it, for help sections."""
    yield prefix, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if is_config(hints[f.name]):
            yield from nested_configs(hints[f.name], prefix + f.name + ".")


# ---- argparse ---------------------------------------------------------------------------------------------
def leaf_values(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """{dotted path: value} of every leaf field of `cls` in the nested dict `d` (e.g. `to_dict()`)."""
    out = {}
    for f in leaf_fields(cls):
        node: Any = d
        for key in f.path.split("."):
            node = node[key]
        out[f.path] = node
    return out


def add_config_flags(parser: argparse.ArgumentParser, cls: type, defaults: dict[str, dict[str, Any]],
                     exclude: frozenset[str] = frozenset(),
                     aliases: dict[str, list[str]] | None = None) -> None:
    """One flag per leaf field of `cls` (except `exclude`), grouped by nested config.

    `defaults` maps a preset name to its flattened config, shown in each help line. Flags are
    `argparse.SUPPRESS`ed by default, so the namespace holds only the ones given.
    """
    aliases = aliases or {}
    leaves = [f for f in leaf_fields(cls) if f.path not in exclude]
    for prefix, config_cls in nested_configs(cls):
        mine = [f for f in leaves if _parent(f.path) == prefix]
        if not mine:
            continue
        title = f"{config_cls.__name__} ({prefix.rstrip('.') or 'top level'})"
        group = parser.add_argument_group(title, (inspect.getdoc(config_cls) or "").split("\n\n")[0])
        for f in mine:
            group.add_argument(*aliases.get(f.path, []), f.flag, dest=FLAG_PREFIX + f.path, type=f.parse,
                               metavar=f.metavar, default=argparse.SUPPRESS, help=_help_line(f, defaults))


def _parent(path: str) -> str:
    """"world_model.denoiser.width" -> "world_model.denoiser."; "seed" -> ""."""
    head, _, _ = path.rpartition(".")
    return head + "." if head else ""


def _help_line(f: FieldInfo, defaults: dict[str, dict[str, Any]]) -> str:
    shown = {name: flat.get(f.path) for name, flat in defaults.items()}
    if len({json.dumps(v, default=str) for v in shown.values()}) == 1:
        default = f"default {_show(next(iter(shown.values())))}"
    else:
        default = "; ".join(f"{name}: {_show(v)}" for name, v in shown.items())
    return f"{f.doc or '(undocumented)'} [{default}]".replace("%", "%%")


def _show(value: Any) -> str:
    return json.dumps(value, default=str) if isinstance(value, (dict, list, str)) else str(value)


def given_flags(namespace: argparse.Namespace) -> dict[str, Any]:
    """{dotted path: value} of the generated flags present on the command line."""
    return {k[len(FLAG_PREFIX):]: v for k, v in vars(namespace).items() if k.startswith(FLAG_PREFIX)}


# ---- merging ---------------------------------------------------------------------------------------------
def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON object from `path` (e.g. a run's config.json, or any part of one); ValueError if unusable."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"cannot read config file {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _merge_dicts(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `override`, recursing where both hold a dict under the same key."""
    out = dict(base)
    for key, value in override.items():
        both_dicts = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merge_dicts(base[key], value) if both_dicts else value
    return out


def merge_into(cls: type, base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`base` (a full `cls.to_dict()`-style dict) updated by a partial nested `override`.

    Nested configs merge field by field and dict-valued fields key by key, recursively (so
    `{"policy_kwargs": {"log_std_init": -1}}` keeps the preset's `net_arch`); an unknown key is a
    ValueError naming it and the valid ones.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = dict(base)
    for key, value in override.items():
        path = where + key
        if key not in names:
            scope = f" of {where.rstrip('.')}" if where else ""
            raise ValueError(f"unknown config key {path!r}; valid keys{scope}: {', '.join(names)}")
        annotation = hints[key]
        if (is_config(annotation) or _is_dict(annotation)) and not isinstance(value, dict):
            raise ValueError(f"config key {path!r} must be a JSON object, got {value!r}")
        if is_config(annotation):
            out[key] = merge_into(annotation, base[key], value, path + ".")
        elif _is_dict(annotation):
            out[key] = _merge_dicts(base[key] or {}, value)
        else:
            out[key] = value
    return out


def _is_dict(annotation: Any) -> bool:
    return annotation is dict or typing.get_origin(annotation) is dict


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
