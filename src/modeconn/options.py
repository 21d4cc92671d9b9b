"""Typed options: frozen dataclasses whose fields carry their help and constraints as data.

A field is declared with `option(default, help, ...)`; its type comes from the annotation
(`int`, `float`, `str`, `bool`, `X | None`, `tuple[X, ...]`). Building the dataclass checks every
field once and names the field and its owner in the message (`'points' of interpolate must be an
integer ≥ 2, got 1`); the CLI turns each field of a job config into a flag and adds its name. A
config round-trips through `to_dict`/`from_dict` (what config.json holds, what a study file gives).

A class may name presets (`presets`: name → the field values it sets, e.g. a reference
implementation's defaults) and take them in a `preset` field (`preset_option`). A preset is a
shorthand: the options given beside it win over its values, and the config built holds the values
it set, not its name (so a record never depends on what a later version's preset means, and a
preset spelled out is the same experiment, with the same job id).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from .errors import UsageError


class ConfigError(UsageError):
    """A field of an options dataclass (a job config, the training settings) holds a value it
    cannot take."""

    def __init__(self, job: str, name: str, requirement: str, value: Any):
        self.job, self.name, self.requirement, self.value = job, name, requirement, value
        got = "" if value is MISSING else f", got {value!r}"
        super().__init__(f"'{name}' of {job} {requirement}{got}")


@dataclass(frozen=True)
class Meta:
    """What a field declares beside its type and default."""

    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    finite: bool = True
    nonempty: bool = False
    positional: bool = False
    flag: str | None = None
    setting: bool = True  # part of what the job computes (False: where and how it runs)
    metavar: str | None = None
    # Added after configs were first recorded: left out of `to_dict` while at its default, so the
    # records and ids of what earlier versions wrote (which lack it) stay the same.
    later: bool = False


def preset_option(presets: Mapping[str, Any], what: str) -> Any:
    """The `preset` field of a class with these presets (None: none; `what` says what a preset
    sets, for the help)."""
    return option(None, f"set the options to {what}; options given beside it win",
                  choices=tuple(presets), later=True)


def as_flags(values: Mapping[str, Any]) -> str:
    """Field values as the command line spells them ('--solver emd --no-squared'), for help."""
    def flag(k: str, v: Any) -> str:
        name = k.replace("_", "-")
        if isinstance(v, bool):
            return f"--{name}" if v else f"--no-{name}"
        return f"--{name} {v:g}" if isinstance(v, float) else f"--{name} {v}"
    return " ".join(flag(k, v) for k, v in values.items())


def option(default: Any = MISSING, help: str = "", *, choices=None, low=None, high=None,
           low_open: bool = False, high_open: bool = False, finite: bool = True,
           nonempty: bool = False, positional: bool = False, flag: str | None = None,
           setting: bool = True, metavar: str | None = None, later: bool = False) -> Any:
    """A config field with its help and constraints (`low`/`high` bound numbers and every
    element of a tuple of numbers; `choices` the values of a string or of its elements;
    `later`: an option added after configs were recorded, recorded only when not its default)."""
    if isinstance(default, list):
        default = tuple(default)
    meta = Meta(help=help, choices=None if choices is None else tuple(choices), low=low,
                high=high, low_open=low_open, high_open=high_open, finite=finite,
                nonempty=nonempty, positional=positional, flag=flag, setting=setting,
                metavar=metavar, later=later)
    return dataclasses.field(default=default, metadata={"modeconn": meta})


@dataclass(frozen=True)
class FieldInfo:
    """One field of a config, resolved: name, base type, whether None and tuples are allowed."""

    name: str
    base: type
    optional: bool
    many: bool
    default: Any
    meta: Meta

    @property
    def required(self) -> bool:
        return self.default is MISSING


def _resolve(annotation: Any) -> tuple[type, bool, bool]:
    """(base type, optional, tuple) of an annotation like `tuple[int, ...] | None`."""
    optional = many = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        (annotation,) = rest
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        many = True
        annotation = args[0]
    if annotation not in (int, float, str, bool):
        raise TypeError(f"unsupported config field type {annotation!r}")
    return annotation, optional, many


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _bound_words(info: FieldInfo) -> str:
    m = info.meta
    parts = []
    if m.low is not None:
        parts.append(f"{'>' if m.low_open else '≥'} {m.low:g}")
    if m.high is not None:
        parts.append(f"{'<' if m.high_open else '≤'} {m.high:g}")
    return " and ".join(parts)


def requirement(info: FieldInfo) -> str:
    """What a value of the field must be, in words ('must be an integer ≥ 2')."""
    m = info.meta
    if m.choices is not None:
        what = "one of " + ", ".join(map(str, m.choices))
    else:
        what = _TYPE_WORDS[info.base]
        if info.base is float and m.finite:
            what = "a finite number"
        bounds = _bound_words(info)
        if bounds:
            what += " " + bounds
    if info.many:
        what = ("a non-empty list" if m.nonempty else "a list") + " of " + (
            "values from " + ", ".join(map(str, m.choices)) if m.choices is not None else
            what.replace("an integer", "integers").replace("a finite number", "finite numbers")
                .replace("a number", "numbers").replace("a string", "strings"))
    if info.optional:
        what += " (or none)"
    return "must be " + what


class Options:
    """Base of every options dataclass: checks its fields when built, round-trips through dicts.

    Subclasses are `@dataclass(frozen=True, kw_only=True)` naming themselves in `job` (the name
    messages use: a job's name, or e.g. "training") and may add cross-field checks in `check()`,
    raising `self.invalid(field, requirement)`.
    """

    job: ClassVar[str] = "options"
    hidden: ClassVar[tuple[str, ...]] = ()  # inherited fields this class does not take
    # Presets (taken by a `preset` field): name → the field values it sets. A field in
    # `preset_fixed` cannot be given another value beside the preset (a method's preset and
    # another method).
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = MappingProxyType({})
    preset_fixed: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if getattr(self, "preset", None) is not None:  # built directly: a field left at its
            infos = config_fields(type(self))          # default takes the preset's value
            given = {i.name: getattr(self, i.name) for i in infos
                     if i.name != "preset" and _plain(getattr(self, i.name)) != _plain(i.default)}
            for name, value in _with_preset(type(self), self.preset, given).items():
                object.__setattr__(self, name, value)
            object.__setattr__(self, "preset", None)
        for info in config_fields(type(self)):
            value = getattr(self, info.name)
            object.__setattr__(self, info.name, _coerce(self.job, info, value))
        self.check()

    @classmethod
    def check_preset(cls, name: str, values: Mapping[str, Any]) -> None:
        """Refuse preset `name` where it does not apply to the options given beside it (their
        values, the preset's under them); raise `ConfigError(cls.job, "preset", ...)`. Every
        preset applies by default."""

    def check(self) -> None:
        """Constraints between fields (none by default)."""

    def invalid(self, name: str, requirement: str) -> ConfigError:
        """The error for field `name`, whose value breaks `requirement` ('must be ...')."""
        return ConfigError(self.job, name, requirement, _plain(getattr(self, name)))

    def to_dict(self, settings_only: bool = False) -> dict[str, Any]:
        """Every field (or only those that are settings of the computation) as plain JSON data;
        a field added `later` only when it is not its default."""
        out = {}
        for i in config_fields(type(self)):
            value = _plain(getattr(self, i.name))
            if (i.meta.setting or not settings_only) and not (
                    i.meta.later and value == _plain(i.default)):
                out[i.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """A config from a mapping of field names (dashes allowed) to values; unknown or missing
        names are refused by name."""
        infos = {i.name: i for i in config_fields(cls)}
        values = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in infos:
                raise UsageError(f"{cls.job} has no option {key!r}; it takes "
                                 f"{', '.join(sorted(infos))}")
            values[name] = value
        preset = values.pop("preset", None)
        if preset is not None:
            values = _with_preset(cls, preset, values)
        for info in infos.values():
            if info.required and info.name not in values:
                raise ConfigError(cls.job, info.name, "is required", MISSING)
        return cls(**values)

    def replace(self, **changes: Any):
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def config_fields(cls: type) -> list[FieldInfo]:
    """The fields of a config class, resolved (cached per class)."""
    cache = cls.__dict__.get("_field_infos")
    if cache is not None:
        return cache
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in getattr(cls, "hidden", ()):
            continue
        meta = f.metadata.get("modeconn") or Meta(help="")
        base, optional, many = _resolve(hints[f.name])
        out.append(FieldInfo(f.name, base, optional, many, f.default, meta))
    cls._field_infos = out  # type: ignore[attr-defined]
    return out


def _with_preset(cls: type, name: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """The field values of preset `name` with the options given beside it on top (a field the
    class fixes must then agree with the preset)."""
    presets = getattr(cls, "presets", {})
    if not isinstance(name, str) or name not in presets:
        info = next(i for i in config_fields(cls) if i.name == "preset")
        raise ConfigError(cls.job, "preset", requirement(info), _plain(name))
    values = dict(presets[name])
    for field in cls.preset_fixed:
        if field in values and field in given and given[field] != values[field]:
            raise ConfigError(cls.job, field, f"must be {values[field]!r} with preset {name} "
                                              f"(leave it out, or drop the preset)",
                              _plain(given[field]))
    values.update(given)
    cls.check_preset(name, values)
    return values


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _coerce(job: str, info: FieldInfo, value: Any) -> Any:
    """The value in the field's type, or a ConfigError naming the field."""
    if value is None:
        if info.optional:
            return None
        raise ConfigError(job, info.name, requirement(info), value)
    if info.many:
        original = value
        if isinstance(value, str) and info.base is not str:
            value = [v for v in value.split(",") if v.strip()]
        elif isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(job, info.name, requirement(info), value)
        items = tuple(_scalar(job, info, v, original) for v in value)
        if info.meta.nonempty and not items:
            raise ConfigError(job, info.name, requirement(info), _plain(original))
        return items
    return _scalar(job, info, value, value)


def _scalar(job: str, info: FieldInfo, v: Any, whole: Any) -> Any:
    bad = ConfigError(job, info.name, requirement(info), _plain(whole))
    base, m = info.base, info.meta
    if base is bool:
        if not isinstance(v, bool):
            raise bad
        return v
    if base is str:
        if isinstance(v, os.PathLike):  # a path where a file name is expected
            v = os.fspath(v)
        if not isinstance(v, str):
            raise bad
    elif base is int:
        if isinstance(v, bool):
            raise bad
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        elif isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                raise bad from None
        if not isinstance(v, int):
            raise bad
    elif base is float:
        if isinstance(v, bool):
            raise bad
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise bad from None
        if not isinstance(v, (int, float)):
            raise bad
        try:
            v = float(v)
        except OverflowError:  # an integer beyond every float (10**400 from a study file)
            raise bad from None
        if m.finite and not math.isfinite(v):
            raise bad
        if math.isnan(v):
            raise bad
    if m.choices is not None and v not in m.choices:
        raise bad
    if base in (int, float):
        if m.low is not None and (v < m.low or (m.low_open and v == m.low)):
            raise bad
        if m.high is not None and (v > m.high or (m.high_open and v == m.high)):
            raise bad
    return v
