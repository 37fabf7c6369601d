"""Hyper-parameters declared once, as dataclass fields with a default and a help text; the CLI is generated from them."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any

HELP = "help"
PARSE = "parse"
CLI = "cli"
CHECK = "check"


@dataclasses.dataclass(frozen=True)
class Range:
    """A number between `low` and `high` (None: unbounded), each end included unless `open` there."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self}" if too_low or too_high else None

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of `choices`."""

    choices: tuple[str, ...]

    def problem(self, value: Any) -> str | None:
        return None if value in self.choices else f"must be one of {', '.join(self.choices)}"


def param(default: Any, help: str, *, check: Range | OneOf | Callable[[Any], str | None] | None = None,
          parse: Callable[[str], Any] | None = None, cli: bool = True) -> Any:
    """A declared hyper-parameter: its default, the help text the CLI and docs show, what values it accepts
    (`check`: a Range, OneOf, or a function returning what is wrong), and how the CLI parses it when the annotation alone does not say (`parse`); `cli=False` keeps
    it out of the CLI."""
    return dataclasses.field(default=default, metadata={HELP: help, PARSE: parse, CLI: cli, CHECK: check})


def check_params(estimator: Any) -> None:
    """Raise one ValueError naming the first declared parameter of `estimator` whose value its check refuses
    (None passes wherever the annotation admits it)."""
    hints = typing.get_type_hints(type(estimator))
    for field in declared(type(estimator)):
        check, value = field.metadata.get(CHECK), getattr(estimator, field.name)
        if check is None or (value is None and type(None) in typing.get_args(hints[field.name])):
            continue
        problem = check.problem(value) if isinstance(check, (Range, OneOf)) else check(value)
        if problem:
            raise ValueError(f"{field.name} {problem}, got {value!r}")


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


class Params:
    """scikit-learn's estimator conventions, without importing scikit-learn (1.2 of the 3.4 s every `predict` and
    `serve` spent importing): `get_params` (`deep`: nested ones as `index__n_probe`), `set_params` (nested too), and
    a repr of the parameters that differ from their defaults. `sklearn.base.clone` works on it (tested)."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        return sorted(p.name for p in inspect.signature(cls.__init__).parameters.values()
                      if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                params.update((f"{name}__{key}", nested) for key, nested in value.get_params().items())
            params[name] = value
        return params

    def set_params(self, **params: Any) -> "Params":
        names = self._get_param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, _, inner = key.partition("__")
            if name not in names:
                raise ValueError(f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                                 f"Valid parameters are: {names!r}.")
            if inner:
                nested.setdefault(name, {})[inner] = value
            else:
                setattr(self, name, value)
        for name, inner_params in nested.items():
            getattr(self, name).set_params(**inner_params)
        return self

    def __repr__(self) -> str:
        defaults = inspect.signature(type(self).__init__).parameters
        changed = [f"{name}={getattr(self, name)!r}" for name in self._get_param_names()
                   if repr(getattr(self, name)) != repr(defaults[name].default)]
        return f"{type(self).__name__}({', '.join(changed)})"
