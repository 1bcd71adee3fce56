"""Typed hyper-parameters: every tunable value is declared once, with its type, default, range and help.

A strategy (or callback) declares

    hparams = {
        "buffer_size": HP(200, "samples kept in memory, over all tasks", low=0),
        "alpha": HP(0.3, "weight of the logit-matching term", low=0, search=loguniform(0.01, 10)),
        "buffer": HP("reservoir", "insertion policy", choices=("reservoir", "class_balanced")),
        "mem_batch_size": HP(None, "memory samples per step (null: train.batch_size)", type=int, low=1),
    }

and `check_section` parses and checks a whole config section against it, once, before anything is written:
unknown keys are refused with a "did you mean", values are coerced (`1e3` for an int is 1000) or refused with
one line naming the key and the reason. The core keys (seed, train.lr, model.width, ...) use the same specs
(`clbench.config.CORE`), so there is one error phrasing everywhere: `errors.bad_value`.

`search` is a suggested search domain for `clbench tune` (`loguniform`, `uniform`, `randint`, `choice`).
"""
from __future__ import annotations

import difflib
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from clbench.errors import ConfigError, bad_value

INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Domain:
    """A search domain for tuning: kind is loguniform, uniform, randint (inclusive) or choice."""
    kind: str
    values: tuple

    def to_dict(self) -> dict:
        return {"kind": self.kind, "values": list(self.values)}

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(map(str, self.values))})"


def loguniform(low: float, high: float) -> Domain:
    return Domain("loguniform", (float(low), float(high)))


def uniform(low: float, high: float) -> Domain:
    return Domain("uniform", (float(low), float(high)))


def randint(low: int, high: int) -> Domain:
    return Domain("randint", (int(low), int(high)))


def choice(*values) -> Domain:
    return Domain("choice", tuple(values))


TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
              dict: "a mapping"}


@dataclass(frozen=True)
class HP:
    """One declared hyper-parameter.

    type: int, float, bool, str, list or dict, or a tuple of them (e.g. (float, list) for "one number, or one
    per layer"); inferred from the default when omitted. items: element type of a list. low/high: inclusive
    bounds for numbers (and for list items); gt: strict lower bound. choices: the allowed values. nullable:
    None allowed (always true when the default is None).
    """
    default: Any
    help: str
    type: Any = None
    items: Any = None
    low: Optional[float] = None
    high: Optional[float] = None
    gt: Optional[float] = None
    choices: Optional[tuple] = None
    nullable: bool = False
    search: Optional[Domain] = None

    @property
    def types(self) -> tuple:
        if self.type is not None:
            return self.type if isinstance(self.type, tuple) else (self.type,)
        if self.choices:
            return (type(self.choices[0]),)
        if self.default is None:
            raise TypeError("an HP whose default is None must give its type")
        return (type(self.default),)

    @property
    def allows_none(self) -> bool:
        return self.nullable or self.default is None

    def describe_type(self) -> str:
        names = []
        for t in self.types:
            names.append(f"list of {t_name(self.items)}" if t is list and self.items else t_name(t))
        s = " or ".join(names)
        if self.choices:
            s = "one of " + ", ".join(map(str, self.choices))
        if self.allows_none:
            s += " or null"
        return s

    def describe_range(self) -> str:
        parts = []
        if self.gt is not None:
            parts.append(f"> {self.gt:g}")
        if self.low is not None:
            parts.append(f">= {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return ", ".join(parts)


def t_name(t) -> str:
    return TYPE_NAMES.get(t, getattr(t, "__name__", str(t)))


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _short(value) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


def _coerce_scalar(key: str, value, t, spec: HP):
    """value as type t, or raise ConfigError. Numbers must be finite; bool is never an int."""
    if t is bool:
        if isinstance(value, bool):
            return value
        raise bad_value(key, f"expected true or false, got {_short(value)}")
    if t is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad_value(key, f"expected an integer, got {_short(value)}")
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                raise bad_value(key, f"expected an integer, got {_short(value)}")
            value = int(value)
        if abs(value) > INT64_MAX:
            raise bad_value(key, f"expected an integer within 64 bits, got {_short(value)}")
        return value
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad_value(key, f"expected a number, got {_short(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise bad_value(key, f"expected a finite number, got {_short(value)}") from None
        if not math.isfinite(value):
            raise bad_value(key, f"expected a finite number, got {value}")
        return value
    if t is str:
        if not isinstance(value, str):
            raise bad_value(key, f"expected a string, got {_short(value)}")
        return value
    if t is list:
        if not isinstance(value, (list, tuple)):
            raise bad_value(key, f"expected a list, got {_short(value)}")
        if spec.items is None:
            return list(value)
        return [_check_number_range(f"{key}[{i}]", _coerce_scalar(f"{key}[{i}]", v, spec.items, spec), spec)
                for i, v in enumerate(value)]
    if t is dict:
        if not isinstance(value, dict):
            raise bad_value(key, f"expected a mapping, got {_short(value)}")
        return dict(value)
    if isinstance(value, t):
        return value
    raise bad_value(key, f"expected {t_name(t)}, got {_short(value)}")


def _check_number_range(key: str, value, spec: HP):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if spec.gt is not None and not value > spec.gt:
        raise bad_value(key, f"expected a number > {spec.gt:g}, got {_short(value)}")
    if spec.low is not None and value < spec.low:
        raise bad_value(key, f"expected a number >= {spec.low:g}, got {_short(value)}")
    if spec.high is not None and value > spec.high:
        raise bad_value(key, f"expected a number <= {spec.high:g}, got {_short(value)}")
    return value


def check_value(key: str, value, spec: HP):
    """The value parsed and checked against its declaration; raises ConfigError naming `key`."""
    if value is None:
        if spec.allows_none:
            return None
        raise bad_value(key, f"expected {spec.describe_type()}, got null")
    if spec.choices is not None:
        # equal value and kind: `true` is not the choice 1, and 1 is not "1"
        if any(value == c and isinstance(value, bool) == isinstance(c, bool) and isinstance(value, str) == isinstance(c, str)
               for c in spec.choices):
            return value
        raise bad_value(key, f"expected one of {', '.join(map(str, spec.choices))}, got {_short(value)}."
                        + did_you_mean(value, spec.choices))
    errors = []
    # Try the declared types in order; for (float, list) a scalar is a float and a list a list.
    for t in spec.types:
        try:
            return _check_number_range(key, _coerce_scalar(key, value, t, spec), spec)
        except ConfigError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    raise bad_value(key, f"expected {spec.describe_type()}, got {_short(value)}")


def check_section(section: str, values: dict, specs: dict[str, HP], skip: Sequence[str] = ("name",)) -> dict:
    """Check every key of a config section against its declarations; unknown keys are refused.

    Returns a new dict with the coerced values, declared keys in declaration order, then `skip` keys.
    """
    if not isinstance(values, dict):
        raise bad_value(section, f"expected a mapping, got {_short(values)}")
    unknown = [k for k in values if k not in specs and k not in skip]
    if unknown:
        k = unknown[0]
        valid = ", ".join(specs) or "(none)"
        raise ConfigError(f"unknown key '{section}.{k}'.{did_you_mean(k, specs)} Valid keys of '{section}': "
                          f"{valid}.")
    out = {k: values[k] for k in skip if k in values}
    for k, spec in specs.items():
        out[k] = check_value(f"{section}.{k}", values.get(k, spec.default), spec)
    return out


def defaults(specs: dict[str, HP]) -> dict:
    return {k: spec.default for k, spec in specs.items()}


# ----- specs from a constructor signature (scenarios, models, datasets, the Avalanche bridge) -------------
def _spec_from_annotation(name: str, param: inspect.Parameter, hints: dict, doc: str = "") -> HP:
    default = None if param.default is inspect.Parameter.empty else param.default
    ann = hints.get(name, param.annotation)
    types, nullable = _types_from_annotation(ann)
    if not types:
        types = (type(default),) if default is not None else (object,)
    if float in types and int not in types and isinstance(default, int) and not isinstance(default, bool):
        default = float(default)
    if types == (object,):
        return HP(default, doc or "(undocumented)", type=object, nullable=True)
    return HP(default, doc or "(undocumented)", type=types if len(types) > 1 else types[0],
              nullable=nullable or default is None)


def _types_from_annotation(ann) -> tuple[tuple, bool]:
    if ann is inspect.Parameter.empty or ann is Any:
        return (), True
    origin = typing.get_origin(ann)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        types, nullable = [], False
        for a in typing.get_args(ann):
            if a is type(None):
                nullable = True
            else:
                t, n = _types_from_annotation(a)
                types += list(t)
                nullable |= n
        return tuple(dict.fromkeys(types)), nullable
    if origin in (list, tuple, typing.Sequence) or ann in (list, tuple):
        return (list,), False
    if origin is dict or ann is dict:
        return (dict,), False
    if origin is typing.Literal:
        return tuple(dict.fromkeys(type(a) for a in typing.get_args(ann))), False
    if isinstance(ann, type):
        return (ann,), False
    return (), True


def specs_from_signature(fn, skip: Sequence[str] = ("self",), docs: Optional[dict] = None) -> dict[str, HP]:
    """HP specs for the keyword parameters of a constructor or loader (types from annotations or defaults)."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    out = {}
    for name, p in sig.parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = _spec_from_annotation(name, p, hints, (docs or {}).get(name, ""))
    return out


class Params(dict):
    """Checked hyper-parameter values with attribute access: `self.hp.buffer_size`."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no hyper-parameter '{key}' (declared: {', '.join(self)})") from None


__all__ = ["HP", "Domain", "Params", "check_value", "check_section", "defaults", "specs_from_signature",
           "loguniform", "uniform", "randint", "choice", "did_you_mean"]
