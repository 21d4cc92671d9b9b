"""The `modeconn` command line."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import MISSING as _MISSING

from ._version import __version__
from .errors import DivergedError, UsageError
from .jobs import build, command, config_fields, execute, names
from .options import ConfigError


def format_default(value) -> str:
    """A default as it would be typed: lists comma-separated."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to every option whose default is set (not None, False or empty;
    0 is shown)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or default is False \
                or default == argparse.SUPPRESS or (isinstance(default, (list, tuple)) and not default):
            return text
        return f"{text} (default: {format_default(default).replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UsageError(f"{message} (see {self.prog} --help)")


NEGATIVE_VALUE_OPTIONS = ("--range",)


# ---------------------------------------------------------------- generated from the job registry

def _flag(info) -> str:
    return info.meta.flag or "--" + info.name.replace("_", "-")


def _field_help(info) -> str:
    text = info.meta.help
    default = info.default
    if not info.required and default is not None and default is not False \
            and not (isinstance(default, tuple) and not default):
        text += f" (default: {format_default(default)})"
    return text.replace("%", "%%")


def add_job_parser(sub, job) -> argparse.ArgumentParser:
    """A subcommand whose arguments are the job config's fields: positional fields as
    positionals, others as --flags; values are left as typed and checked by the config."""
    p = sub.add_parser(job.name, help=job.help, description=job.help)
    for info in config_fields(job.config):
        m = info.meta
        kw: dict = {"help": _field_help(info), "default": argparse.SUPPRESS}
        if m.positional:
            if info.many:
                kw["nargs"] = "+" if m.nonempty else "*"
            p.add_argument(info.name, metavar=m.metavar or info.name, **kw)
            continue
        if info.base is bool:
            kw["action"] = "store_true" if info.default is False else argparse.BooleanOptionalAction
        else:
            kw["metavar"] = m.metavar or ("{" + ",".join(map(str, m.choices)) + "}" if m.choices
                                          and not info.many else info.name.upper())
        p.add_argument(_flag(info), dest=info.name, **kw)
    if job.output is not None:
        o = job.output
        p.add_argument("--out", required=o.required and o.default is None, default=o.default,
                       help=o.help)  # the formatter shows the default
    p.set_defaults(job=job, func=run_job)
    return p


def _given(job, args: argparse.Namespace) -> dict:
    """The options typed on the command line, by field name (comma lists split)."""
    given = {}
    for info in config_fields(job.config):
        if hasattr(args, info.name):
            value = getattr(args, info.name)
            if info.many and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            given[info.name] = value
    return given


def run_job(args: argparse.Namespace) -> int:
    """Build the job's config from the typed options, run it and print its summary."""
    job = args.job
    out = getattr(args, "out", None)
    result = execute(job, build(job, _given(job, args), out), out)
    for line in result.lines():
        print(line)
    return result.exit_code


def _flag_message(e) -> str:
    """A field's error in the words of the command line: its flag and the value as typed."""
    flag = e.name if e.name in ("a", "b", "models", "checkpoints", "checkpoint", "curve") \
        else "--" + e.name.replace("_", "-")
    got = "" if e.value is _MISSING else f", got {_typed(e.value)}"
    return f"{flag} {e.requirement}{got}"


def _typed(value) -> str:
    """A value as it was typed ('' for nothing)."""
    text = format_default(value) if isinstance(value, (list, tuple)) else str(value)
    return text or "''"


def _glue_negative_values(argv: list[str]) -> list[str]:
    """`--range -0.2,1.2` → `--range=-0.2,1.2`: argparse would take the value for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in NEGATIVE_VALUE_OPTIONS and re.match(r"-\.?\d", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


# The commands in the order `modeconn --help` lists them.
COMMANDS = ("run", "results", "report", "train", "interpolate", "align", "merge", "merge-many",
            "fusion", "continual", "lmc", "ensemble", "demo", "curve", "curve-ensemble",
            "curve-point", "fge", "landscape", "sharpness", "info")


def build_parser() -> argparse.ArgumentParser:
    """`modeconn` with one subcommand per registered job."""
    parser = _Parser(prog="modeconn", description="Mode connectivity for any PyTorch model.")
    parser.add_argument("--version", action="version", version=f"modeconn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    rest = sorted(set(names()) - set(COMMANDS))
    for name in (*COMMANDS, *rest):
        add_job_parser(sub, command(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        argv = _glue_negative_values(sys.argv[1:] if argv is None else [str(a) for a in argv])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ConfigError as e:  # a field named as its flag
        print(f"modeconn: error: {_flag_message(e)}", file=sys.stderr)
        return 2
    except (UsageError, DivergedError) as e:  # bad input; a divergence asks for other settings
        print(f"modeconn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("modeconn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `modeconn results DIR | head`: the reader has all it wanted
        sys.stdout = None  # nothing more to flush into the closed pipe at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
