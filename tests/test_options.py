"""The options floor (`modeconn.options`): constraints declared as data, one message template
naming the parameter and its owner — the exact message of each constraint kind (bounds low,
high, open and closed; choices; non-empty; finite; each type; tuples; None), the conversions a
command line and a study file rely on, and the round trip through dicts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from modeconn.errors import UsageError
from modeconn.options import ConfigError, Options, config_fields, option, requirement


@dataclass(frozen=True, kw_only=True)
class Opt(Options):
    job = "opt"
    n: int = option(2, "an integer from 1", low=1)
    rate: float = option(0.5, "a rate in [0, 1)", low=0, high=1, high_open=True)
    scale: float = option(1.0, "a scale > 0", low=0, low_open=True)
    frac: float = option(0.5, "a fraction in (0, 1]", low=0, high=1, low_open=True)
    cap: int = option(3, "at most 5", high=5)
    wild: float = option(1.0, "any number, infinities included", finite=False)
    mode: str = option("a", "one of a, b", choices=("a", "b"))
    name: str = option("x", "any text")
    flag: bool = option(False, "true or false")
    width: float | None = option(None, "a width > 0 or none", low=0, low_open=True)
    kind: str | None = option(None, "a kind or none", choices=("p", "q"))
    seeds: tuple[int, ...] = option([0], "seeds ≥ 0", low=0)
    rates: tuple[float, ...] = option((), "rates in [0, 1]", low=0, high=1)
    splits: tuple[str, ...] = option(("a",), "splits", choices=("a", "b"), nonempty=True)
    labels: tuple[str, ...] = option((), "labels")
    sizes: tuple[int, ...] | None = option(None, "sizes or none", nonempty=True)
    where: str = option("cpu", "where it runs", setting=False)


def _message(**kw) -> str:
    with pytest.raises(ConfigError) as e:
        Opt(**kw)
    assert e.value.job == "opt" and e.value.name == next(iter(kw))
    return str(e.value)


@pytest.mark.parametrize("kw,message", [
    # bounds: closed and open, low and high, both
    ({"n": 0}, "'n' of opt must be an integer ≥ 1, got 0"),
    ({"cap": 6}, "'cap' of opt must be an integer ≤ 5, got 6"),
    ({"scale": 0.0}, "'scale' of opt must be a finite number > 0, got 0.0"),
    ({"scale": -1}, "'scale' of opt must be a finite number > 0, got -1"),
    ({"rate": 1.0}, "'rate' of opt must be a finite number ≥ 0 and < 1, got 1.0"),
    ({"rate": -0.1}, "'rate' of opt must be a finite number ≥ 0 and < 1, got -0.1"),
    ({"frac": 0}, "'frac' of opt must be a finite number > 0 and ≤ 1, got 0"),
    ({"frac": 1.5}, "'frac' of opt must be a finite number > 0 and ≤ 1, got 1.5"),
    # finite
    ({"rate": math.inf}, "'rate' of opt must be a finite number ≥ 0 and < 1, got inf"),
    ({"rate": "nan"}, "'rate' of opt must be a finite number ≥ 0 and < 1, got 'nan'"),
    ({"wild": math.nan}, "'wild' of opt must be a number, got nan"),  # nan is never a value
    # choices
    ({"mode": "c"}, "'mode' of opt must be one of a, b, got 'c'"),
    ({"kind": "r"}, "'kind' of opt must be one of p, q (or none), got 'r'"),
    # types
    ({"n": 2.5}, "'n' of opt must be an integer ≥ 1, got 2.5"),
    ({"n": "two"}, "'n' of opt must be an integer ≥ 1, got 'two'"),
    ({"n": True}, "'n' of opt must be an integer ≥ 1, got True"),
    ({"n": math.inf}, "'n' of opt must be an integer ≥ 1, got inf"),
    ({"rate": False}, "'rate' of opt must be a finite number ≥ 0 and < 1, got False"),
    ({"rate": [0.5]}, "'rate' of opt must be a finite number ≥ 0 and < 1, got [0.5]"),
    ({"name": 3}, "'name' of opt must be a string, got 3"),
    ({"flag": 1}, "'flag' of opt must be true or false, got 1"),
    ({"flag": "true"}, "'flag' of opt must be true or false, got 'true'"),
    # None
    ({"n": None}, "'n' of opt must be an integer ≥ 1, got None"),
    ({"mode": None}, "'mode' of opt must be one of a, b, got None"),
    ({"width": 0}, "'width' of opt must be a finite number > 0 (or none), got 0"),
    # tuples: every element checked, the whole value shown
    ({"seeds": [0, -1]}, "'seeds' of opt must be a list of integers ≥ 0, got [0, -1]"),
    ({"seeds": "0,-1"}, "'seeds' of opt must be a list of integers ≥ 0, got '0,-1'"),
    ({"seeds": 3}, "'seeds' of opt must be a list of integers ≥ 0, got 3"),
    ({"rates": (0.5, 2)}, "'rates' of opt must be a list of finite numbers ≥ 0 and ≤ 1, got [0.5, 2]"),
    ({"rates": [math.nan]}, "'rates' of opt must be a list of finite numbers ≥ 0 and ≤ 1, got [nan]"),
    ({"splits": []}, "'splits' of opt must be a non-empty list of values from a, b, got []"),
    ({"splits": ["a", "c"]}, "'splits' of opt must be a non-empty list of values from a, b, "
                             "got ['a', 'c']"),
    ({"labels": ["x", 1]}, "'labels' of opt must be a list of strings, got ['x', 1]"),
    ({"sizes": ""}, "'sizes' of opt must be a non-empty list of integers (or none), got ''"),
    ({"sizes": [None]}, "'sizes' of opt must be a non-empty list of integers (or none), got [None]"),
])
def test_each_constraint_kind_has_its_known_message(kw, message):
    assert _message(**kw) == message


def test_an_integer_too_large_for_a_float_is_refused_by_name():
    # A study file may hold any integer; float() of 10**400 overflows instead of giving inf.
    assert _message(rate=10 ** 400).startswith("'rate' of opt must be a finite number ≥ 0 and < 1, "
                                               "got 1000")
    with pytest.raises(ConfigError, match="^'rates' of opt must be a list of finite numbers"):
        Opt(rates=[10 ** 400])


def test_requirement_words_of_each_field():
    words = {i.name: requirement(i) for i in config_fields(Opt)}
    assert words == {
        "n": "must be an integer ≥ 1",
        "rate": "must be a finite number ≥ 0 and < 1",
        "scale": "must be a finite number > 0",
        "frac": "must be a finite number > 0 and ≤ 1",
        "cap": "must be an integer ≤ 5",
        "wild": "must be a number",
        "mode": "must be one of a, b",
        "name": "must be a string",
        "flag": "must be true or false",
        "width": "must be a finite number > 0 (or none)",
        "kind": "must be one of p, q (or none)",
        "seeds": "must be a list of integers ≥ 0",
        "rates": "must be a list of finite numbers ≥ 0 and ≤ 1",
        "splits": "must be a non-empty list of values from a, b",
        "labels": "must be a list of strings",
        "sizes": "must be a non-empty list of integers (or none)",
        "where": "must be a string",
    }


def test_values_are_converted_to_the_field_type():
    o = Opt(n="4", rate="0.25", cap=5.0, wild="-inf", seeds="1, 2,", rates=[0, 1], splits="b",
            labels=["x"], sizes=(3,), name=Path("data") / "x.npz", width=2)
    assert (o.n, o.rate, o.cap, o.wild) == (4, 0.25, 5, -math.inf)
    assert type(o.cap) is int and type(o.width) is float and type(o.rates[0]) is float
    assert (o.seeds, o.rates, o.splits, o.labels, o.sizes) == ((1, 2), (0.0, 1.0), ("b",), ("x",),
                                                               (3,))
    assert o.name == str(Path("data") / "x.npz")
    assert Opt().seeds == (0,)  # a list default is stored as a tuple (frozen, hashable)
    assert Opt(width=None, kind=None, sizes=None).width is None


def test_bounds_are_inclusive_unless_open():
    o = Opt(n=1, cap=5, rate=0.0, frac=1.0, rates=[0.0, 1.0])
    assert (o.n, o.cap, o.rate, o.frac, o.rates) == (1, 5, 0.0, 1.0, (0.0, 1.0))


def test_dicts_round_trip_and_name_unknown_and_missing_fields():
    o = Opt(n=3, seeds=(1, 2), width=0.5, where="cuda")
    d = o.to_dict()
    assert d["seeds"] == [1, 2] and d["width"] == 0.5 and d["where"] == "cuda"
    assert Opt.from_dict(d) == o
    assert "where" not in o.to_dict(settings_only=True)
    assert Opt.from_dict({"n": 2, "mode": "b"}).mode == "b"
    with pytest.raises(UsageError, match=r"^opt has no option 'nope'; it takes cap, flag, frac, "):
        Opt.from_dict({"nope": 1})

    @dataclass(frozen=True, kw_only=True)
    class Needs(Options):
        job = "needs"
        size: int = option(help="a size", low=1)

    with pytest.raises(ConfigError) as e:
        Needs.from_dict({})
    assert str(e.value) == "'size' of needs is required"
    assert Needs.from_dict({"size": "2"}).size == 2


def test_dashed_names_from_a_command_line_or_a_study_file():
    @dataclass(frozen=True, kw_only=True)
    class Dashed(Options):
        job = "dashed"
        batch_size: int = option(8, "batch", low=1)

    assert Dashed.from_dict({"batch-size": 4}).batch_size == 4


def test_replace_checks_again_and_cross_field_checks_name_their_field():
    @dataclass(frozen=True, kw_only=True)
    class Span(Options):
        job = "span"
        lo: int = option(0, "low")
        hi: int = option(1, "high")

        def check(self):
            if self.hi <= self.lo:
                raise self.invalid("hi", f"must be > lo ({self.lo})")

    assert Span(lo=1, hi=2).replace(hi=3).hi == 3
    with pytest.raises(ConfigError) as e:
        Span(lo=1, hi=2).replace(hi=1)
    assert str(e.value) == "'hi' of span must be > lo (1), got 1"
    with pytest.raises(ConfigError, match="^'lo' of span must be an integer, got 'x'$"):
        Span(hi=5).replace(lo="x")


def test_hidden_fields_are_not_options_and_unsupported_types_are_refused():
    @dataclass(frozen=True, kw_only=True)
    class Fewer(Opt):
        job = "fewer"
        hidden = ("where", "labels")

    names = [i.name for i in config_fields(Fewer)]
    assert "where" not in names and "labels" not in names and "n" in names
    with pytest.raises(UsageError, match="fewer has no option 'where'"):
        Fewer.from_dict({"where": "cpu"})

    @dataclass(frozen=True, kw_only=True)
    class Odd(Options):
        job = "odd"
        table: dict = option(None, "a table")

    with pytest.raises(TypeError, match="unsupported config field type"):
        config_fields(Odd)
