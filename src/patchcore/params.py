"""Hyper-parameters declared once, as dataclass fields with a default and a help text; the CLI is generated from them."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

HELP = "help"
PARSE = "parse"
CLI = "cli"


def param(default: Any, help: str, *, parse: Callable[[str], Any] | None = None, cli: bool = True) -> Any:
    """A declared hyper-parameter: its default, the help text the CLI and docs show, and how the CLI
    parses it when the annotation alone does not say (`parse`); `cli=False` keeps it out of the CLI."""
    return dataclasses.field(default=default, metadata={HELP: help, PARSE: parse, CLI: cli})


def declared(cls: type) -> list[dataclasses.Field]:
    """The declared hyper-parameters of an estimator class, in signature order."""
    return [f for f in dataclasses.fields(cls) if HELP in f.metadata]


def value_type(cls: type, field: dataclasses.Field) -> type | None:
    """The plain type (bool, int, float, str) a field holds besides None, or None when it is a union of more."""
    hint = typing.get_type_hints(cls)[field.name]
    options = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return options[0] if len(options) == 1 and options[0] in (bool, int, float, str) else None


def documented(cls: type) -> type:
    """Append a 'Parameters' section, built from the declarations, to an estimator class's docstring."""
    lines = ["", "Parameters", "----------"]
    for field in declared(cls):
        lines += [f"{field.name} : default {field.default!r}", f"    {field.metadata[HELP]}"]
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
    return cls


def comma_list(text: str) -> list[str]:
    """'layer2,layer3' -> ['layer2', 'layer3']."""
    return [item.strip() for item in text.split(",") if item.strip()]


def int_or_raw(text: str) -> int | str:
    """A positive integer, or 'raw'."""
    if text == "raw":
        return text
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r}: give a positive integer or 'raw'")
    return int(text)
