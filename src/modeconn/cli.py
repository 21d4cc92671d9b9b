"""The `modeconn` command line."""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import MISSING as _MISSING
from pathlib import Path

from .errors import DivergedError, UsageError
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

HELP_DATA_DIR = "where dataset files live (default: $MODECONN_DATA, else ~/.cache/modeconn/data)"
HELP_DEVICE = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"
HELP_OVERWRITE = "write into --out even if it exists and is not empty"
HELP_QUIET = "no progress bars"



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
    from .jobs import config_fields

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
    from .jobs import config_fields

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
    from .jobs import build, execute

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
    """A value as it was typed."""
    return format_default(value) if isinstance(value, (list, tuple)) else str(value)


def _glue_negative_values(argv: list[str]) -> list[str]:
    """`--range -0.2,1.2` → `--range=-0.2,1.2`: argparse would take the value for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in NEGATIVE_VALUE_OPTIONS and re.match(r"-\.?\d", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_data_args(p: argparse.ArgumentParser, shift_default: str = "none") -> None:
    """Dataset, shift and normalisation options."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded), mnist, fashion-mnist, cifar10, cifar100, "
                        "synthetic[:n=N,test=N,shape=CxHxW,classes=K,seed=S]")
    g.add_argument("--data-dir", default=None, help=HELP_DATA_DIR)
    g.add_argument("--shift", default=shift_default,
                   help="none, iid:50,50, label-skew:0-4=80,5-9=20, dirichlet:ALPHA, "
                        "domain:none|rotate=30+noise=0.1")
    g.add_argument("--subsets", type=int, default=None, help="number of subsets for dirichlet")
    g.add_argument("--split-seed", type=int, default=0,
                   help="seed of the split into subsets and of dirichlet proportions (lmc: "
                        "added to each of --seeds)")
    g.add_argument("--normalise", default="global", choices=["global", "subset", "none"],
                   help="input normalisation statistics")


def add_model_args(p: argparse.ArgumentParser, default: str = "mlp") -> None:
    """Model name and its options."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default,
                   help="mlp, mlpnet, mlplarge, mlphuge, vgg11/13/16/19, resnet20 (any 6n+2), convnet")
    g.add_argument("--depth", type=int, default=None, help="MLP hidden layers / VGG or ResNet depth")
    g.add_argument("--width", type=float, default=None,
                   help="MLP units per hidden layer, or width multiplier")
    g.add_argument("--norm", default=None, help="bn or none (MLP, VGG); bn, gn, ln or none (ResNet)")
    g.add_argument("--bias", default=None, action=argparse.BooleanOptionalAction, help="MLP biases")
    g.add_argument("--dropout", type=float, default=None, help="ConvNet dropout")


def add_train_args(p: argparse.ArgumentParser, schedule: bool = True) -> None:
    """Optimisation options (without --epochs, --schedule and --warmup when the command sets
    its own schedule, as fge's cycles do)."""
    g = p.add_argument_group("training")
    if schedule:
        g.add_argument("--epochs", type=int, default=20, help="passes over the training data")
    g.add_argument("--batch-size", type=int, default=64, help="examples per optimisation step")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"],
                   help="optimiser")
    g.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD only)")
    g.add_argument("--weight-decay", type=float, default=5e-4,
                   help="L2 penalty (decoupled for adamw)")
    if schedule:
        g.add_argument("--schedule", default="constant",
                       help="constant, cosine, curve, step:M1,M2[@GAMMA], cyclic:EPOCHS[@LOW]")
        g.add_argument("--warmup", type=float, default=0.0, help="epochs of linear warm-up")
    g.add_argument("--device", default="auto", help=HELP_DEVICE)


def add_dataset_mismatch_arg(p: argparse.ArgumentParser) -> None:
    """The one switch that lets checkpoints trained on different datasets be combined."""
    p.add_argument("--allow-dataset-mismatch", action="store_true",
                   help="combine checkpoints trained on different datasets (or with and without "
                        "input normalisation); all are evaluated on the first one's data")


def add_output_args(p: argparse.ArgumentParser) -> None:
    """Options shared by commands that read checkpoints and write one output directory."""
    p.add_argument("--data-dir", default=None, help=HELP_DATA_DIR)
    p.add_argument("--device", default="auto", help=HELP_DEVICE)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)


def model_overrides(args: argparse.Namespace) -> dict:
    """Model options given on the command line."""
    width = args.width
    if width is not None and args.model.startswith("mlp"):
        if not math.isfinite(width) or width != int(width):
            raise UsageError(f"MLP --width is a number of units, got {width}")
        width = int(width)
    return {"depth": args.depth, "width": width, "norm": args.norm, "bias": args.bias,
            "dropout": args.dropout}


def train_config(args: argparse.Namespace, **fixed):
    """The TrainConfig of the training options; `fixed` gives fields the command sets itself."""
    from .train import TrainConfig
    names = ("epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
             "schedule", "warmup")
    return TrainConfig(**{n: getattr(args, n) for n in names if n not in fixed}, **fixed,
                       save_epochs=tuple(getattr(args, "save_epochs", ()) or ()))


# Where the data are and how a run is shown are not settings of the run: not recorded, not compared.
NOT_TRAIN_SETTINGS = ("out", "resume", "quiet", "device", "data_dir", "command", "func")


def _train_settings(args: argparse.Namespace) -> dict:
    """The options of `modeconn train` that define the run, as recorded in its config.json."""
    return {k: v for k, v in vars(args).items()
            if k not in NOT_TRAIN_SETTINGS and not k.startswith("_")}


def _given_options(args: argparse.Namespace) -> set[str]:
    """The destinations of the options typed on the command line (not left at their defaults)."""
    argv = getattr(args, "_argv", None)
    if argv is None:  # called without main(): treat every option as given
        return set(vars(args))
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    p = sub.choices[args.command]
    p._defaults.clear()
    for action in p._actions:
        action.default = argparse.SUPPRESS  # an option not typed leaves no attribute
    return set(vars(p.parse_args(argv[argv.index(args.command) + 1:])))


def _resume_settings(args: argparse.Namespace) -> dict | None:
    """On --resume, take every run setting not typed again from the run's config.json (those
    typed must match it, which train_run checks); None for a run that recorded no options."""
    import json

    path = Path(args.out) / "config.json"
    if not args.resume or not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text()).get("options")
    except (OSError, ValueError, AttributeError):
        return {}  # train_run reports the unreadable run
    if stored is None:
        return None
    given = _given_options(args)
    for key, value in stored.items():
        if key not in given and key not in NOT_TRAIN_SETTINGS:
            setattr(args, key, value)
    return stored


def cmd_train(args: argparse.Namespace) -> int:
    from .data import DataSpec, prepare_subsets
    from .models import model_config
    from .train import plan_members, resolve_device, train_run

    recorded = _resume_settings(args)
    cfg = train_config(args)
    cfg.validate()
    device = resolve_device(args.device)
    spec = DataSpec(dataset=args.dataset, shift=args.shift, num_subsets=args.subsets,
                    split_seed=args.split_seed, norm=args.normalise)
    subsets = prepare_subsets(spec, args.data_dir)
    only = None
    if args.only:
        names = [s.strip() for s in args.only.split(",")]
        valid = [chr(ord("a") + i) for i in range(len(subsets))] if args.shift != "none" \
            else ["all"]
        bad = [s for s in names if s not in valid]
        if bad:
            raise UsageError(f"--only {','.join(bad)}: no such subset; choose from {','.join(valid)}")
        only = [valid.index(s) for s in names]
    model_cfg = model_config(args.model, subsets[0].input_shape, subsets[0].num_classes,
                             **model_overrides(args))
    members = plan_members(spec, subsets, args.init, args.init_seed, args.batch_order,
                           args.order_seed, only)
    run_info = None if recorded is None else {"options": _train_settings(args)}
    results = train_run(model_cfg, members, cfg, Path(args.out), device, args.resume, args.quiet,
                        run_info)
    diverged = False
    for r in results:
        if r["status"] == "diverged":
            diverged = True
            print(f"{r['member']}: DIVERGED at epoch {r['epoch']} step {r['step']} "
                  f"(loss {r['loss']}); lower --lr or add --warmup")
        else:
            print(f"{r['member']}: train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f} | "
                  f"test loss {r['test_loss']:.4f} acc {r['test_acc']:.4f}")
    print(f"wrote {args.out}")
    return 1 if diverged else 0


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import describe, load_checkpoint
    for path in args.checkpoints:
        print(describe(load_checkpoint(path)))
    return 0


def _out_dir(path: str, overwrite: bool = False) -> Path:
    from .io import check_output_dir

    out = check_output_dir(path)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"output directory {out} already exists and is not empty; "
                         "choose another --out or pass --overwrite")
    return out


def cmd_lmc(args: argparse.Namespace) -> int:
    from .experiments.lmc import LMCStudy, run_study
    from .train import resolve_device

    # --batch-size B / --lr L are a one-value grid, the same as --batch-sizes B / --lrs L.
    grids = {}
    for one, many, default in (("batch_size", "batch_sizes", [32]), ("lr", "lrs", [0.05])):
        single, values = getattr(args, one), getattr(args, many)
        if single is not None and values is not None:
            raise UsageError(f"give --{many.replace('_', '-')} or --{one.replace('_', '-')}, "
                             "not both")
        grids[many] = tuple(values if values is not None else
                            [single] if single is not None else default)
        if not grids[many]:
            raise UsageError(f"--{many.replace('_', '-')} needs at least one value")
    study = LMCStudy(dataset=args.dataset, data_dir=args.data_dir, model=args.model,
                     model_options=model_overrides(args), shift=args.shift,
                     num_subsets=args.subsets, split_seed=args.split_seed,
                     normalise=args.normalise, inits=tuple(args.init.split(",")),
                     batch_orders=tuple(args.batch_order.split(",")), **grids,
                     seeds=tuple(args.seeds),
                     train=train_config(args, batch_size=grids["batch_sizes"][0],
                                        lr=grids["lrs"][0]),
                     points=args.points,
                     ensemble_size=args.ensemble_size, bn_reset=args.bn_reset,
                     tolerance=args.tolerance, lr_scaling=args.lr_scaling)
    for v in study.inits:
        if v not in ("same", "different"):
            raise UsageError(f"--init takes same and/or different, got {v!r}")
    for v in study.batch_orders:
        if v not in ("same", "independent"):
            raise UsageError(f"--batch-order takes same and/or independent, got {v!r}")
    summary = run_study(study, Path(args.out), resolve_device(args.device), args.resume, args.quiet)
    print(summary_table(summary))
    print(f"wrote {args.out}")
    return 0


def summary_table(rows: list[dict]) -> str:
    """The study summary as a fixed-width text table."""
    head = (f"{'model':<10} {'shift':<26} {'init':<9} {'order':<11} {'bs':>4} {'lr':>6} {'g':>7} "
            f"{'train barrier':>15} {'test barrier':>15} {'test Δacc %':>13} "
            f"{'LMC ens gain %':>14} {'ind ens gain %':>14} {'ok':>4}")
    lines = [head, "-" * len(head)]
    for r in rows:
        def pm(key, scale=1.0):
            m, s = r[key] * scale, r[f"{key}_std"] * scale
            if m != m:
                return "n/a"
            return f"{m:.3f} (n=1)" if s != s else f"{m:.3f}±{s:.3f}"  # one value: no spread
        lines.append(
            f"{r['model']:<10} {r['shift']:<26} {r['init']:<9} {r['batch_order']:<11} "
            f"{r['batch_size']:>4} {r['lr']:>6g} {r['noise_scale_g']:>7.2f} "
            f"{pm('train_loss_barrier'):>15} {pm('test_loss_barrier'):>15} "
            f"{pm('test_delta_acc', 100):>13} {pm('lmc_ens_gain_acc', 100):>14} "
            f"{pm('ind_ens_gain_acc', 100):>14} {r['seeds_ok']:>2}/{r['seeds_ok'] + r['diverged']}")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from .experiments.demo import run_demo
    from .train import resolve_device

    t0 = time.perf_counter()
    rows = run_demo(Path(args.out), resolve_device(args.device), args.quick, args.resume, args.quiet,
                    args.jobs)
    print(summary_table(rows))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s "
          f"(summary.csv, summary.txt, barriers.png, delta.png, one folder per study)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="modeconn", description="Mode connectivity for any PyTorch model.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"modeconn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train models on controlled subsets of a dataset")
    add_data_args(p)
    add_model_args(p)
    add_train_args(p)
    g = p.add_argument_group("members")
    g.add_argument("--only", default=None, help="train only these subsets, e.g. a or a,c")
    g.add_argument("--init", default="same", choices=["same", "different"],
                   help="one initialisation for every member, or one per member (seed + i)")
    g.add_argument("--init-seed", type=_int_list, default=[0],
                   help="one seed, or one per subset")
    g.add_argument("--batch-order", default="same", choices=["same", "independent"],
                   help="same: every subset visited in one sequence of positions per epoch "
                        "(same SGD noise); independent: each subset shuffled with its own seed")
    g.add_argument("--order-seed", type=int, default=0, help="seed of the batch order")
    p.add_argument("--save-epochs", type=_int_list, default=(), help="also save these epochs")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out with the settings in its "
                        "config.json (options given again must match them)")
    p.add_argument("--quiet", action="store_true", help=HELP_QUIET)
    p.set_defaults(func=cmd_train)

    from .jobs import get
    add_job_parser(sub, get("interpolate"))
    add_job_parser(sub, get("align"))
    add_job_parser(sub, get("merge-many"))

    p = sub.add_parser("lmc", help="the LMC-under-data-shift study: train pairs, interpolate, "
                                    "ensembles, over grids of batch size and learning rate")
    add_data_args(p, shift_default="iid:50,50")
    add_model_args(p)
    add_train_args(p)
    g = p.add_argument_group("study")
    g.add_argument("--init", default="same", help="same, different, or same,different")
    g.add_argument("--batch-order", default="same,independent",
                   help="same, independent, or both comma-separated")
    g.add_argument("--batch-sizes", type=_int_list, default=None,
                   help="grid of batch sizes, comma-separated (default 32; --batch-size B is "
                        "--batch-sizes B)")
    g.add_argument("--lrs", type=_float_list, default=None,
                   help="grid of learning rates, comma-separated (default 0.05; --lr L is --lrs L)")
    g.add_argument("--lr-scaling", default="none", choices=["none", "linear"],
                   help="linear: scale each lr by batch size / first batch size")
    g.add_argument("--seeds", type=_int_list, default=[0, 1, 2],
                   help="one pair of models per seed and configuration")
    g.add_argument("--points", type=int, default=25, help="evenly spaced λ in [0, 1] per path")
    g.add_argument("--ensemble-size", type=int, default=3,
                   help="members of the LMC (points on the path) and independent ensembles")
    g.add_argument("--bn-reset", default="auto", choices=["auto", "on", "off"],
                   help="re-estimate BatchNorm statistics at every point (auto: when the model "
                        "has BN)")
    g.add_argument("--tolerance", type=float, default=0.01,
                   help="largest train loss barrier counted as connected")
    p.add_argument("--out", required=True, help="study directory")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted study in --out, reusing finished runs")
    p.add_argument("--quiet", action="store_true", help=HELP_QUIET)
    p.set_defaults(func=cmd_lmc, batch_size=None, lr=None)

    add_job_parser(sub, get("ensemble"))

    p = sub.add_parser("demo", help="the LMC-under-shift study on digits (a few minutes)")
    p.add_argument("--out", default="results/demo", help="output directory")
    p.add_argument("--quick", action="store_true", help="a smaller smoke run")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes on CPU (default: one per core)")
    p.add_argument("--device", default="auto", help=HELP_DEVICE)
    p.add_argument("--resume", action="store_true",
                   help="continue a demo directory without demo.json (one that holds this demo "
                        "is continued without it)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_demo)

    for name in ("curve", "curve-ensemble", "curve-point", "fge"):
        add_job_parser(sub, get(name))

    add_job_parser(sub, get("landscape"))
    add_job_parser(sub, get("sharpness"))

    p = sub.add_parser("info", help="show what a checkpoint holds")
    p.add_argument("checkpoints", nargs="+", help="checkpoint files (.safetensors)")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        argv = _glue_negative_values(sys.argv[1:] if argv is None else [str(a) for a in argv])
        args = build_parser().parse_args(argv)
        args._argv = argv
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


if __name__ == "__main__":
    sys.exit(main())
