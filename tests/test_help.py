"""A newcomer can read `--help`: every option of every command says what it does and shows its
default."""

from __future__ import annotations

import argparse

import pytest

from modeconn.cli import build_parser, format_default


def _subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def _options(p: argparse.ArgumentParser):
    return [a for a in p._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def _help_of(p: argparse.ArgumentParser, action: argparse.Action) -> str:
    fmt = p._get_formatter()
    fmt.add_argument(action)
    return " ".join(fmt.format_help().split())  # unwrapped


COMMANDS = sorted(_subparsers())


def test_every_command_is_covered():
    assert {"train", "lmc", "ensemble", "align", "info", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command):
    p = _subparsers()[command]
    missing = [a.option_strings[0] if a.option_strings else a.dest
               for a in _options(p) if not (a.help or "").strip()]
    assert not missing, f"{command}: options without help: {missing}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_default_is_shown(command):
    p = _subparsers()[command]
    hidden = []
    for a in _options(p):
        if a.default is None or a.default is False or a.default == argparse.SUPPRESS \
                or a.default == ():
            continue
        text = _help_of(p, a)
        if f"default: {format_default(a.default)})" not in text:
            hidden.append((a.option_strings[0] if a.option_strings else a.dest, text))
    assert not hidden, f"{command}: defaults not shown: {hidden}"


def test_train_help_shows_the_epochs_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS" in text and "(default: 20)" in text
    assert "(default: 0.05)" in text  # --lr
    assert "seed of the batch order (default: 0)" in text  # 0 is a default, not "unset"
    assert "(default: None)" not in text and "(default: False)" not in text


def test_list_defaults_are_shown_as_typed():
    assert format_default([0, 1, 2]) == "0,1,2"
    assert format_default((-0.2, 1.2)) == "-0.2,1.2"
    assert format_default("auto") == "auto"
