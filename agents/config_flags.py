"""Frozen dataclass configs as trees: typed updates from nested or dotted dicts, and command-line flags.

Every leaf field has a dotted path (`world_model.denoiser.width`) and a flag of that name
(`--world-model.denoiser.width`), typed from its annotation and explained by the first sentence of the
field's docstring, so a new config field needs no CLI change. Values from JSON files and flags are
checked against the annotation before any config is built, and errors name the path.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import json
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from imagined_env.config_tree import coerce, field_types, flatten, is_config

FLAG_PREFIX = "config:"
"""Namespace attributes of generated flags start with this, to tell them from other options."""


# ---- the tree ---------------------------------------------------------------------------------------
def leaf_paths(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, type]]:
    """(dotted path, annotation, owning dataclass) of every non-dataclass field of `cls`, depth first."""
    for name, annotation in field_types(cls).items():
        if is_config(annotation):
            yield from leaf_paths(annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, annotation, cls


def override(config: Any, changes: dict[str, Any], where: str = "") -> Any:
    """A copy of the dataclass `config` with `changes` ({dotted path or nested key: value}) applied, one
    `dataclasses.replace` per nested config, so checks see the final values together."""
    types_ = field_types(type(config))
    groups: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for path, value in flatten(type(config), changes).items():
        head, _, rest = path.partition(".")
        if rest:
            groups.setdefault(head, {})[rest] = value
        else:
            direct[head] = value if is_config(types_[head]) else coerce(where + head, types_[head], value)
    for head, sub in groups.items():
        direct[head] = override(direct.get(head, getattr(config, head)), sub, f"{where}{head}.")
    return dataclasses.replace(config, **direct) if direct else config


def leaf_values(config: Any) -> dict[str, Any]:
    """{dotted path: value} of every leaf field of the dataclass instance `config`."""
    out = {}
    for path, _, _ in leaf_paths(type(config)):
        node = config
        for key in path.split("."):
            node = getattr(node, key)
        out[path] = node
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON object from `path`; ValueError if unreadable, not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"cannot read config file {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object, got {type(data).__name__}")  # noqa: TRY004
    return data


# ---- documentation ------------------------------------------------------------------------------------
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal right after it in the class body (cached: parsing is slow)."""
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    except (OSError, TypeError):
        return {}
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def first_sentence(text: str) -> str:
    """Up to the first full stop followed by a capital letter: the help line of a field."""
    return re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0]


def field_doc(path: str, owner: type) -> str:
    return field_docs(owner).get(path.rsplit(".", 1)[-1], "")


# ---- flags --------------------------------------------------------------------------------------------
def _flag_parser(path: str, annotation: Any) -> tuple[Callable[[str], Any], str]:
    """A str -> value parser and a metavar: "none" reads as None where allowed, lists as "64,64"."""
    optional = type(None) in typing.get_args(annotation)
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(annotation) if a is not type(None)) if is_union else annotation
    booleans = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}

    def parse(text: str) -> Any:
        word = text.strip().lower()
        if optional and word in ("none", "null"):
            return None
        if base is bool:
            value: Any = booleans.get(word, text)
        elif base is str:
            value = text
        elif typing.get_origin(base) is tuple:
            value = [_number(v) for v in text.strip("[]() ").split(",") if v.strip()]
        else:
            value = _number(text)
        try:
            return coerce(path, annotation, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    names = {bool: "{true,false}", int: "INT", float: "FLOAT", str: "STR"}
    metavar = names.get(base, "N,N,..." if typing.get_origin(base) is tuple else "VALUE")
    return parse, metavar + ("|none" if optional else "")


def _number(text: str) -> Any:
    """An int or float read from `text` ("1_000" allowed), else `text` itself for the type check to name."""
    for kind in (int, float):
        try:
            return kind(text.replace("_", ""))
        except ValueError:
            pass
    return text


def flag_name(path: str) -> str:
    return "--" + path.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, defaults: dict[str, dict[str, Any]],
                     exclude: frozenset[str] = frozenset(),
                     aliases: dict[str, list[str]] | None = None) -> None:
    """One flag per leaf field of `cls` (except `exclude`), one help group per nested config.

    `defaults` maps a name (e.g. a preset) to its `leaf_values`; each help line shows the first one's
    value and where another differs, its value too. Flags default to "not given" (`argparse.SUPPRESS`),
    so the namespace holds only the ones on the command line.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for path, annotation, owner in leaf_paths(cls):
        if path in exclude:
            continue
        section = path.rpartition(".")[0]
        if section not in groups:
            groups[section] = parser.add_argument_group(section or "run", _class_doc(owner))
        parse, metavar = _flag_parser(path, annotation)
        groups[section].add_argument(*(aliases or {}).get(path, []), flag_name(path), dest=FLAG_PREFIX + path,
                                     type=parse, metavar=metavar, default=argparse.SUPPRESS,
                                     help=_help_line(first_sentence(field_doc(path, owner)), path, defaults))


def _class_doc(cls: type) -> str:
    return first_sentence((inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " "))


def _help_line(doc: str, path: str, defaults: dict[str, dict[str, Any]]) -> str:
    (_, first_values), *others = defaults.items()
    shown = [_show(first_values[path])] + [f"{name} {_show(values[path])}" for name, values in others
                                            if values[path] != first_values[path]]
    return f"{doc} [{'; '.join(shown)}]".replace("%", "%%")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return json.dumps(value) if isinstance(value, str) else str(value)


def given_flags(namespace: argparse.Namespace) -> dict[str, Any]:
    """{dotted path: value} of the generated flags present on the command line."""
    return {k[len(FLAG_PREFIX):]: v for k, v in vars(namespace).items() if k.startswith(FLAG_PREFIX)}
