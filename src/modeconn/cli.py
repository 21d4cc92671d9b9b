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
HELP_BN_RESET = ("re-estimate BatchNorm statistics on the training data before evaluating "
                 "(auto: when the model has BN)")



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
                       help=o.help + (f" (default: {o.default})" if o.default else ""))
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


def add_alignment_args(p: argparse.ArgumentParser, out_default: str) -> None:
    """Options shared by align and merge-many."""
    p.add_argument("--spec", default=None, metavar="JSON",
                   help="a hand-written permutation spec instead of the one traced from the "
                        "model (checked before use; an align run's permutation.json also works)")
    p.add_argument("--seed", type=int, default=0,
                   help="layer order of weight matching; batches and probes of STE, STE-MM and "
                        "the Hessian trace")
    p.add_argument("--data-dir", default=None, help=HELP_DATA_DIR)
    p.add_argument("--device", default="auto", help=HELP_DEVICE)
    p.add_argument("--out", default=out_default, help="output directory")
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    add_dataset_mismatch_arg(p)


def add_ste_args(p: argparse.ArgumentParser, method: str, batched: str) -> None:
    """Options of the straight-through estimators (STE in align, STE-MM in merge-many)."""
    p.add_argument("--epochs", type=int, default=None,
                   help=f"{method} epochs (default 10, or more on small datasets, enough for the "
                        "steps the reference takes: modeconn.align.ste_epochs)")
    p.add_argument("--lr", type=float, default=1e-3, help=f"{method} learning rate (Adam)")
    p.add_argument("--batch-size", type=int, default=256, help=f"{batched} batch size")
    p.add_argument("--warm", default=True, action=argparse.BooleanOptionalAction,
                   help=f"warm-start {method}'s per-batch weight matching from the last "
                        "permutation (as the reference code does) and LAP solution (--no-warm: "
                        "cold solves from the identity every batch; slower)")


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


def _read_spec(path: str):
    """A hand-written permutation spec: PermutationSpec.to_dict JSON, or an align run's
    permutation.json (its "spec")."""
    import json

    from .align import PermutationSpec

    try:
        data = json.loads(Path(path).read_text())
        data = data.get("spec", data)
        return PermutationSpec.from_dict(data)
    except OSError as e:
        raise UsageError(f"cannot read --spec {path}: {e.strerror}") from None
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise UsageError(f"--spec {path} is not a permutation spec ({type(e).__name__}: {e}); "
                         "write {\"sizes\": {P: n}, \"axes\": {tensor: [P or null per axis]}} "
                         "or pass an align run's permutation.json") from None


def _align_setup(paths: list[str], device_name: str, data_dir: str | None,
                 spec_path: str | None = None, allow_dataset_mismatch: bool = False):
    """Models of one architecture, their evaluation data and a checked spec: read from
    `spec_path`, else derived from the model's graph."""
    from .align import auto_spec, check_spec
    from .checkpoint import load_same_architecture, params_of
    from .data import DataSpec, eval_data
    from .train import resolve_device

    device = resolve_device(device_name)
    model, ckpts = load_same_architecture(paths, device, allow_dataset_mismatch)
    data = eval_data(DataSpec.from_dict(ckpts[0].meta.get("data", {})), "full", data_dir).to(device)
    if spec_path is not None:
        spec = _read_spec(spec_path)
        check_spec(model, spec, data.train_x[:2])  # validates names and sizes, then invariance
        return model, ckpts, [params_of(c, device) for c in ckpts], data, spec
    try:
        spec = auto_spec(model, data.train_x[:2])  # check_spec runs inside
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 — a tracer failure becomes one line
        raise UsageError(f"cannot derive a permutation spec for {type(model).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return model, ckpts, [params_of(c, device) for c in ckpts], data, spec


def _model_meta(ckpt, **extra) -> dict:
    """Metadata of a derived model checkpoint: the source's (architecture, data, ...) plus extras."""
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("modeconn_version", "kind")}
    return {**meta, **extra}


def _test_barrier(summary: dict) -> float:
    return summary["test"]["loss"]["linear"]["barrier"]


def cmd_align(args: argparse.Namespace) -> int:
    from .align import activation_matching, ste_matching, weight_matching
    from .checkpoint import save_checkpoint
    from .io import write_csv, write_json, write_text
    from .paths import interpolate
    from .report.figures import display_names, path_figure, save

    if args.points < 2:
        raise UsageError(f"--points must be at least 2, got {args.points}")
    model, (a, b), (pa, pb), data, spec = _align_setup([args.a, args.b], args.device,
                                                       args.data_dir, args.spec,
                                                       args.allow_dataset_mismatch)
    out = _out_dir(args.out, args.overwrite)
    if args.method == "wm":
        perm = weight_matching(pa, pb, spec=spec, seed=args.seed)
    elif args.method == "am":
        perm = activation_matching(pa, pb, data.train_x, spec, model=model,
                                   batch_size=args.batch_size)
    else:
        model.load_state_dict(pa)
        perm = ste_matching(model, pb, data.train_x, data.train_y, spec, epochs=args.epochs,
                            lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                            warm=args.warm)
    aligned = perm.apply(pb)
    splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    paths, summaries = {}, {}
    for label, other in (("before", pb), ("after", aligned)):
        rows, summary = interpolate(model, pa, other, splits, bn_data=data.train_x,
                                    points=args.points, bn_reset="auto")
        summary["models"] = {"a": str(a.path), "b": str(b.path), "aligned": label == "after"}
        paths[label], summaries[label] = rows, summary
    out.mkdir(parents=True, exist_ok=True)
    alignment = {"method": args.method, "to": str(a.path), "source": str(b.path),
                 "identity": perm.is_identity()}
    save_checkpoint(out / "aligned_b.safetensors", aligned, **_model_meta(b, kind="model",
                                                                          alignment=alignment))
    write_text(out / "permutation.json", perm.to_json())
    for label in ("before", "after"):
        write_json(out / f"barrier_{label}.json", summaries[label])
        write_csv(out / f"path_{label}.csv", paths[label], ["t", "split", "loss", "acc", "length"])
    na, nb = display_names([a.path, b.path])
    save(path_figure({f"{nb} before": paths["before"], f"{nb} aligned": paths["after"]},
                     title=f"linear path {na} → {nb}, before and after aligning {nb} to {na} "
                           f"({args.method})", xlabel=f"λ (0: {na}, 1: {nb})"), out / "path.png")
    before, after = _test_barrier(summaries["before"]), _test_barrier(summaries["after"])
    reduction = 100 * (before - after) / before if before > 0 else float("nan")
    print(f"test loss barrier {before:.4f} → {after:.4f} ({reduction:.1f}% reduction, "
          f"{args.method})")
    print(f"wrote {out}")
    return 0


def cmd_merge_many(args: argparse.Namespace) -> int:
    from .align import Permutation, merge_many, ste_mm
    from .checkpoint import save_checkpoint
    from .evaluate import Evaluator
    from .io import write_csv, write_json
    from .landscape import hessian_trace
    from .merge import average, normalise
    from .paths import interpolate

    if len(args.models) < 2:
        raise UsageError(f"merge-many needs at least 2 models, got {len(args.models)}")
    if args.hessian_probes < 0 or args.hessian_batches < 1:
        raise UsageError("--hessian-probes must be 0 (skip) or more and --hessian-batches at "
                         f"least 1, got {args.hessian_probes} and {args.hessian_batches}")
    model, ckpts, states, data, spec = _align_setup(args.models, args.device, args.data_dir,
                                                    args.spec, args.allow_dataset_mismatch)
    out = _out_dir(args.out, args.overwrite)
    if args.method == "wm":
        merged = merge_many(states, spec, seed=args.seed)
    elif args.method == "ste-mm":
        modules = [c.build(data.train_x.device) for c in ckpts]
        merged = ste_mm(modules, data.train_x, data.train_y, spec, epochs=args.epochs, lr=args.lr,
                        batch_size=args.batch_size, seed=args.seed, warm=args.warm)
    else:
        merged = None
    perms = merged.perms if merged else [Permutation.identity(spec) for _ in states]
    aligned = [p.apply(s) for p, s in zip(perms, states, strict=True)]
    x = data.train_x
    final, repaired_by = normalise(model, aligned, average(aligned), x, args.repair)
    plain, _ = normalise(model, states, average(states), x, args.repair)
    splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    ev = Evaluator(model, splits, bn_data=x, bn_reset="off")
    results = ev.evaluate([final, plain, *states])
    names = [str(c.path) for c in ckpts]
    report = {"method": args.method, "normalisation": repaired_by, "merged": results[0],
              "plain_average": results[1],
              "plain_average_note": "the unaligned average, with the same normalisation "
                                    f"({repaired_by})",
              "members": [{"model": n, **r} for n, r in zip(names, results[2:], strict=True)]}
    if args.hessian_probes:  # flatness of the merged model beside its members', on training data
        traces = [hessian_trace(model, p, x, data.train_y, args.hessian_probes,
                                max_batches=args.hessian_batches, seed=args.seed)
                  for p in [final, *states]]
        report["hessian_trace"] = traces[0]
        for member, tr in zip(report["members"], traces[1:], strict=True):
            member["hessian_trace"] = tr
    if repaired_by == "repair":  # what REPAIR bought: the aligned average without it
        report["merged_without_repair"] = ev.evaluate([average(aligned)])[0]
    rows = []
    for i in range(len(aligned)):
        for j in range(i + 1, len(aligned)):
            _, summary = interpolate(model, aligned[i], aligned[j],
                                     {"test": (data.test_x, data.test_y)}, bn_data=x,
                                     points=args.points, bn_reset="auto")
            rows.append({"a": names[i], "b": names[j], "test_loss_barrier": _test_barrier(summary),
                         "test_error_barrier": summary["test"]["error"]["linear"]["barrier"]})
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "merged.safetensors", final,
                    **_model_meta(ckpts[0], kind="model",
                                  merge={"method": args.method, "models": names,
                                         "normalisation": repaired_by}))
    write_json(out / "merge.json", report)
    write_csv(out / "barriers.csv", rows, ["a", "b", "test_loss_barrier", "test_error_barrier"])
    m, p = results[0]["test"], results[1]["test"]
    accs = [r["test"]["acc"] for r in results[2:]]
    print(f"merged ({args.method}, {repaired_by}): test loss {m['loss']:.4f} acc {m['acc']:.4f} | "
          f"plain average: loss {p['loss']:.4f} acc {p['acc']:.4f} | members acc "
          f"{min(accs):.4f}–{max(accs):.4f}")
    if "merged_without_repair" in report:
        w = report["merged_without_repair"]["test"]
        print(f"without REPAIR: test loss {w['loss']:.4f} acc {w['acc']:.4f} "
              f"(REPAIR {100 * (m['acc'] - w['acc']):+.1f} points)")
    if args.hessian_probes:
        h = report["hessian_trace"]
        members = [m["hessian_trace"]["trace"] for m in report["members"]]
        print(f"Hessian trace (train, {h['probes']} probes × {h['batches']} batches): merged "
              f"{h['trace']:.2f} ± {h['trace_se']:.2f} (SE) | members {min(members):.2f}–"
              f"{max(members):.2f}")
    print(f"wrote {out}")
    return 0


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


def _splits(text: str) -> list[str]:
    splits = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in splits if s not in ("train", "test")]
    if bad or not splits:
        raise UsageError(f"--splits takes train and/or test, got {text!r}")
    return splits


def cmd_curve(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .checkpoint import load_same_architecture, params_of
    from .curves import compare_with_linear, fit_curve, min_bends, save_curve
    from .data import DataSpec, eval_data
    from .io import staged_dir, write_csv, write_json
    from .paths import check_tolerance
    from .report.figures import display_names, path_figure, save
    from .train import environment, resolve_device

    cfg = train_config(args)
    cfg.validate()
    check_tolerance(args.tolerance)
    if args.bends < min_bends(args.kind):
        raise UsageError(f"--bends must be at least {min_bends(args.kind)} for a {args.kind} curve, "
                         f"got {args.bends}")
    if args.points < 2:
        raise UsageError(f"--points must be at least 2, got {args.points}")
    splits = _splits(args.splits)
    device = resolve_device(args.device)
    model, (a, b) = load_same_architecture([args.a, args.b], device, args.allow_dataset_mismatch)
    final = _out_dir(args.out, args.overwrite)
    data = eval_data(DataSpec.from_dict(a.meta.get("data", {})), args.on, args.data_dir).to(device)
    pa, pb = params_of(a, device), params_of(b, device)
    history: list[dict] = []
    with staged_dir(final) as out:  # a fit that diverges or fails leaves nothing in --out
        write_json(out / "env.json", environment(device))
        write_json(out / "config.json", {"a": str(a.path), "b": str(b.path), "kind": args.kind,
                                         "bends": args.bends, "train": asdict(cfg),
                                         "seed": args.seed,
                                         "data": {**data.spec.to_dict(), "on": args.on}})
        curve = fit_curve(model, pa, pb, data.train_x, data.train_y, cfg, args.kind, args.bends,
                          seed=args.seed, quiet=args.quiet,
                          on_epoch=lambda e, loss, lr: history.append(
                              {"epoch": e, "loss": loss, "lr": lr}))
        path = curve.path()
        write_csv(out / "metrics.csv", history, ["epoch", "loss", "lr"])
        save_curve(out / "curve.safetensors", path, a.architecture, data=data.spec.to_dict(),
                   endpoints=[str(a.path), str(b.path)], seed=args.seed, train=asdict(cfg))
        tensors = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
        rows, summary = compare_with_linear(model, path, {s: tensors[s] for s in splits},
                                            data.train_x, args.points, args.bn_reset,
                                            args.tolerance)
        write_csv(out / "path.csv", rows, ["path", "t", "split", "loss", "acc", "length"])
        write_json(out / "barrier.json", {**summary,
                                          "models": {"a": str(a.path), "b": str(b.path)}})
        save(path_figure({k: [r for r in rows if r["path"] == k] for k in ("curve", "linear")},
                         title=f"{args.kind} curve ({args.bends} bends) vs linear path, "
                               f"{' → '.join(display_names([a.path, b.path]))}", xlabel="t"),
             out / "path.png", args.pdf)
    for split in splits:
        c, lin = summary["curve"][split], summary["linear"][split]
        print(f"{split}: loss barrier curve {c['loss']['linear']['barrier']:.4f} vs linear "
              f"{lin['loss']['linear']['barrier']:.4f}; error barrier curve "
              f"{c['error']['linear']['barrier']:.4f} vs linear {lin['error']['linear']['barrier']:.4f}")
    print(f"wrote {final}")
    return 0


def _ensemble_line(name: str, m: dict) -> str:
    return (f"{name:<12} K={m['size']:<3} acc {m['acc']:.4f} (mean member {m['member_acc']:.4f}, "
            f"gain {100 * m['gain_acc']:+.2f}%) NLL {m['nll']:.4f} Brier {m['brier']:.4f} "
            f"ECE {m['ece']:.4f}")


def _fge_members(folder: str, curve_ckpt, device) -> tuple[list[str], list[dict]]:
    """Names and parameter dicts of the snapshots in a `modeconn fge` folder, refused unless they
    share the curve's architecture and dataset."""
    from .checkpoint import load_same_architecture, params_of
    from .fge import snapshot_paths

    _, snaps = load_same_architecture(snapshot_paths(folder), device)  # safetensors only
    if snaps[0].architecture != curve_ckpt.architecture:
        raise UsageError(f"the FGE snapshots in {folder} have a different architecture from the "
                         f"curve {curve_ckpt.path}; run modeconn fge on one of the curve's endpoints")
    data = [c.meta.get("data", {}).get("dataset") for c in (curve_ckpt, snaps[0])]
    if data[0] != data[1]:
        raise UsageError(f"the FGE snapshots in {folder} were trained on {data[1]}, the curve on "
                         f"{data[0]}; run modeconn fge on one of the curve's endpoints")
    return [str(c.path) for c in snaps], [params_of(c, device) for c in snaps]


def cmd_curve_ensemble(args: argparse.Namespace) -> int:
    from .curves import load_curve, path_ensemble
    from .data import DataSpec, eval_data
    from .ensemble import ensemble_metrics
    from .evaluate import Evaluator
    from .io import write_csv, write_json
    from .paths import linear_path
    from .train import resolve_device

    if args.k < 2:
        raise UsageError(f"--k must be at least 2, got {args.k}")
    device = resolve_device(args.device)
    model, path, ckpt = load_curve(args.curve, device)
    fge_names, fge_points = _fge_members(args.fge, ckpt, device) if args.fge else ([], [])
    out = _out_dir(args.out, args.overwrite)
    data = eval_data(DataSpec.from_dict(ckpt.meta.get("data", {})), "full", args.data_dir).to(device)
    ev = Evaluator(model, {"test": (data.test_x, data.test_y)}, bn_data=data.train_x,
                   bn_reset=args.bn_reset)
    ends = [path.bends[0], path.bends[-1]]
    table = {
        "independent": {**ensemble_metrics(ev.probabilities(ends, "test"), data.test_y), "t": [0.0, 1.0]},
        "lmc": path_ensemble(linear_path(*ends), ev, args.k),
        "curve": path_ensemble(path, ev, args.k),
    }
    if fge_points:
        table["fge"] = ensemble_metrics(ev.probabilities(fge_points, "test"), data.test_y)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ensemble.json", {"curve": str(ckpt.path), "k": args.k, **table,
                                       **({"fge_members": fge_names} if fge_names else {})})
    write_csv(out / "comparison.csv", [{"ensemble": k, **{m: v for m, v in r.items() if m != "t"}}
                                       for k, r in table.items()])
    for name, m in table.items():
        print(_ensemble_line(name, m))
    print(f"wrote {out}")
    return 0


def cmd_curve_point(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .curves import load_curve
    from .data import DataSpec, eval_data
    from .evaluate import Evaluator
    from .io import check_output_file
    from .train import resolve_device

    if not 0 <= args.t <= 1:
        raise UsageError(f"--t must be in [0, 1], got {args.t}")
    out = check_output_file(args.out, args.overwrite, example="point.safetensors")
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out} must end in .safetensors")
    device = resolve_device(args.device)
    model, path, ckpt = load_curve(args.curve, device)
    data = eval_data(DataSpec.from_dict(ckpt.meta.get("data", {})), "full", args.data_dir).to(device)
    splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    ev = Evaluator(model, splits, bn_data=data.train_x, bn_reset=args.bn_reset)
    point = ev.bn_reestimated(path.point(args.t))
    # The point already holds its statistics: evaluate it as it is, without a second BN pass.
    (res,) = Evaluator(model, splits, bn_reset="off").evaluate([point])
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, point, kind="model", architecture=ckpt.architecture,
                    data=ckpt.meta.get("data", {}),
                    curve_point={"curve": str(ckpt.path), "t": args.t, "bn_reset": ev.bn_reset})
    print(f"t={args.t:g}: train loss {res['train']['loss']:.4f} acc {res['train']['acc']:.4f} | "
          f"test loss {res['test']['loss']:.4f} acc {res['test']['acc']:.4f}")
    print(f"wrote {out}")
    return 0


def cmd_fge(args: argparse.Namespace) -> int:
    from .checkpoint import load_same_architecture, params_of, save_model
    from .data import DataSpec, eval_data
    from .ensemble import ensemble_metrics
    from .evaluate import Evaluator
    from .fge import fge_snapshots, snapshot_name
    from .io import write_json
    from .train import resolve_device

    # The cycles are fge's schedule: cycles × cycle epochs in all, no other schedule or warm-up.
    cfg = train_config(args, epochs=max(args.cycles, 1) * max(args.cycle_epochs, 1),
                       schedule="constant", warmup=0.0)
    cfg.validate()
    device = resolve_device(args.device)
    model, (ckpt,) = load_same_architecture([args.checkpoint], device)
    out = _out_dir(args.out, args.overwrite)
    data = eval_data(DataSpec.from_dict(ckpt.meta.get("data", {})), args.on, args.data_dir).to(device)
    snaps = fge_snapshots(model, params_of(ckpt, device), data.train_x, data.train_y, cfg,
                          args.cycles, args.cycle_epochs, args.low, args.seed, args.quiet)
    ev = Evaluator(model, {"test": (data.test_x, data.test_y)}, bn_data=data.train_x,
                   bn_reset=args.bn_reset)
    metrics = ensemble_metrics(ev.probabilities(snaps, "test"), data.test_y)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, snap in enumerate(snaps):
        names.append(str(out / snapshot_name(i + 1)))
        model.load_state_dict(snap)
        save_model(names[-1], model, ckpt.architecture, data=ckpt.meta.get("data", {}),
                   fge={"start": str(ckpt.path), "cycle": i + 1})
    write_json(out / "ensemble.json", {"start": str(ckpt.path), "fge": metrics, "members": names,
                                       "cycles": args.cycles, "cycle_epochs": args.cycle_epochs,
                                       "lr": cfg.lr, "low": args.low, "seed": args.seed})
    print(_ensemble_line("fge", metrics))
    print(f"wrote {out}")
    return 0


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
                   help="continue an interrupted demo in --out, reusing finished studies")
    p.add_argument("--quiet", action="store_true", help=HELP_QUIET)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("align", help="align B to A by permutation and compare the barriers")
    p.add_argument("a", help="model checkpoint to align to")
    p.add_argument("b", help="model checkpoint to permute")
    p.add_argument("--method", default="wm", choices=["wm", "am", "ste"],
                   help="weight matching, activation matching or straight-through estimator")
    p.add_argument("--points", type=int, default=25, help="points on the linear paths")
    add_ste_args(p, "STE", "STE/AM")
    add_alignment_args(p, "results/align")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("merge-many", help="align K models, average them, BN reset or REPAIR")
    p.add_argument("models", nargs="*", help="model checkpoints of one architecture")
    p.add_argument("--method", default="wm", choices=["wm", "ste-mm", "avg"],
                   help="MergeMany weight matching, STE-MM, or no alignment (plain average)")
    p.add_argument("--repair", action="store_true",
                   help="REPAIR the merged model (models with BatchNorm always get BN reset)")
    p.add_argument("--points", type=int, default=11, help="points per pairwise barrier")
    add_ste_args(p, "STE-MM", "STE-MM")
    p.add_argument("--hessian-probes", type=int, default=10,
                   help="Hutchinson probes for the Hessian trace of the merged model and of each "
                        "member (0: skip)")
    p.add_argument("--hessian-batches", type=int, default=4,
                   help="training batches of 512 the Hessian trace averages over")
    add_alignment_args(p, "results/merge")
    p.set_defaults(func=cmd_merge_many)

    p = sub.add_parser("curve", help="fit a Bezier or polychain curve between two checkpoints")
    p.add_argument("a", help="model checkpoint at t = 0 (kept fixed)")
    p.add_argument("b", help="model checkpoint at t = 1 (kept fixed)")
    p.add_argument("--kind", default="bezier", choices=["bezier", "polychain"],
                   help="Bezier curve or polygonal chain through the bends")
    p.add_argument("--bends", type=int, default=3, help="bends including both endpoints")
    add_train_args(p)
    p.set_defaults(schedule="curve", epochs=30)
    p.add_argument("--seed", type=int, default=0, help="batch order and t samples")
    p.add_argument("--on", default="full", choices=["full", "own"],
                   help="fit and evaluate on the whole training set (the union of the subsets) "
                        "or on model A's own subset")
    p.add_argument("--points", type=int, default=61, help="evaluated points along the curve")
    p.add_argument("--splits", default="train,test", help="splits to evaluate, comma-separated")
    p.add_argument("--bn-reset", default="auto", choices=["auto", "on", "off"],
                   help="re-estimate BatchNorm statistics at every point (auto: when the model has BN)")
    p.add_argument("--tolerance", type=float, default=0.01, help="loss barrier counted as connected")
    add_dataset_mismatch_arg(p)
    p.add_argument("--data-dir", default=None, help=HELP_DATA_DIR)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    p.add_argument("--pdf", action="store_true", help="also write PDF figures")
    p.add_argument("--quiet", action="store_true", help=HELP_QUIET)
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("curve-ensemble", help="ensembles of K points on a curve and on the linear "
                                               "path, beside the two endpoints (and FGE snapshots)")
    p.add_argument("curve", help="a `modeconn curve` checkpoint (curve.safetensors)")
    p.add_argument("--k", type=int, default=5, help="points per path ensemble, endpoints included")
    p.add_argument("--fge", default=None, metavar="DIR",
                   help="also score the snapshots in this `modeconn fge --out` folder")
    p.add_argument("--bn-reset", default="auto", choices=["auto", "on", "off"],
                   help=HELP_BN_RESET)
    add_output_args(p)
    p.set_defaults(func=cmd_curve_ensemble)

    p = sub.add_parser("curve-point", help="the model at t on a curve, as a model checkpoint")
    p.add_argument("curve", help="a `modeconn curve` checkpoint (curve.safetensors)")
    p.add_argument("--t", type=float, default=0.5, help="position on the curve, in [0, 1]")
    p.add_argument("--bn-reset", default="auto", choices=["auto", "on", "off"],
                   help="re-estimate BatchNorm statistics at the point (auto: when the model has BN)")
    p.add_argument("--data-dir", default=None, help=HELP_DATA_DIR)
    p.add_argument("--device", default="auto", help=HELP_DEVICE)
    p.add_argument("--out", required=True, help="the model checkpoint to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_curve_point)

    p = sub.add_parser("fge", help="fast geometric ensembling from a trained checkpoint")
    p.add_argument("checkpoint", help="trained model checkpoint to start from")
    p.add_argument("--cycles", type=int, default=4, help="learning-rate cycles, one snapshot each")
    p.add_argument("--cycle-epochs", type=int, default=2, help="epochs per cycle")
    p.add_argument("--low", type=float, default=0.01, help="lowest learning rate, as a factor of --lr")
    add_train_args(p, schedule=False)
    p.add_argument("--seed", type=int, default=0, help="batch order")
    p.add_argument("--on", default="full", choices=["full", "own"],
                   help="train and evaluate on the whole dataset or on the model's own subset")
    p.add_argument("--bn-reset", default="auto", choices=["auto", "on", "off"],
                   help=HELP_BN_RESET)
    p.add_argument("--data-dir", default=None, help=HELP_DATA_DIR)
    p.add_argument("--out", required=True, help="output directory (one checkpoint per snapshot)")
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    p.add_argument("--quiet", action="store_true", help=HELP_QUIET)
    p.set_defaults(func=cmd_fge)

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
