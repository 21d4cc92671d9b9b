"""Study files: a TOML file of stages → the study's jobs, each with a stable id.

A study file holds an optional ``[study]`` table (``name``, ``description``) and one table per
stage. A stage names its job kind (``job = "train"``; the stage's own name when omitted) and
the job's fixed options; its sweep axes go in ``[stage.sweep]``::

    [train]
    job = "train"
    dataset = "digits"
    epochs = 8

    [train.sweep]
    seeds = [0, 1, 2]                      # an axis named seed: sets split_seed, init_seed, ...
    grid = { shift = ["iid:50,50", "label-skew:0-4=80,5-9=20"], batch_order = ["same", "independent"] }
    zip = { batch_size = [32, 128], lr = [0.05, 0.2] }

    [interpolate]
    a = "@train/a/model.safetensors"       # one interpolate job per train job
    b = "@train/b/model.safetensors"

A string ``"@stage/path"`` is a file of an earlier stage's job (``"@stage"`` its output
itself); the stage then runs once per job of that stage (jobs of several stages are paired where
their sweep values agree). ``"@stage[seed]/path"`` gathers the files of every seed into one list
(e.g. the models of ``merge-many``); ``"@stage[seed=1]/path"`` reads only the jobs with that
sweep value (e.g. ``a`` from seed 0 and ``b`` from seed 1 of one stage). Grid axes multiply;
``zip`` axes (``zip = {...}``, or ``[[stage.sweep.zip]]`` tables for several groups) advance
together; ``seeds`` is an axis named
``seed`` that sets every seed option of the job (``seed_fields`` names them otherwise).

A job's id is its stage and a hash of its resolved settings (with the ids of the jobs it reads):
changing a setting changes the id, running the same file again finds the same ids.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
from dataclasses import MISSING as _MISSING
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .. import artefacts
from ..errors import UsageError
from ..jobs import OptionRefused
from ..jobs import get as get_job
from ..jobs import names as job_names
from ..options import ConfigError, config_fields

# Jobs that are not computations a study can schedule.
NOT_IN_STUDIES = {"run": "it runs studies", "results": "it reads studies",
                  "report": "it reads studies", "fusion": "it is a study itself",
                  "demo": "it is a study itself", "info": "it writes no files",
                  "calibrate": "it writes no files"}
# Options the runner sets itself for every job.
RUNNER_OPTIONS = {"resume", "overwrite", "quiet", "pdf"}
SWEEP_KEYS = {"grid", "zip", "seeds", "seed_fields"}
STUDY_KEYS = {"name", "description", "max_jobs"}
REF = re.compile(r"^@([A-Za-z_][\w-]*)(?:\[([^\]]*)\])?(?:/(.*))?$", re.ASCII)
STAGE_NAME = re.compile(r"^[A-Za-z_][\w-]*$", re.ASCII)
# A study's name becomes its directory (results/<name>): a single safe path component.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$", re.ASCII)
MAX_JOBS = 1000  # a larger sweep starts only when asked (run --yes, or max_jobs in [study])
SHOWN_FILES = 8  # of what an upstream job writes, named in a message


class StudyError(UsageError):
    """A study file that cannot run: the message names the file, the table and the key."""


@dataclass(frozen=True)
class Ref:
    """A reference to the output of an earlier stage's job(s)."""

    stage: str
    gather: tuple[str, ...]  # the upstream axes gathered into one list (empty: one per job)
    select: tuple[tuple[str, Any], ...]  # only the upstream jobs with these sweep values
    path: str  # inside the job's output ("" for the output itself)

    @property
    def source(self) -> tuple:
        """Which jobs of the stage it reads (references differing only in path share it)."""
        return (self.stage, self.gather, self.select)


@dataclass
class Stage:
    """One table of the study file."""

    name: str
    job: str
    options: dict[str, Any]
    axes: list[list[dict[str, Any]]]  # each axis: its assignments, in order (grid: one key each)
    seed_fields: tuple[str, ...] = ()
    refs: dict[str, Ref] = field(default_factory=dict)  # the string value → its reference

    @property
    def upstream(self) -> list[str]:
        """The stages this one reads."""
        return list(dict.fromkeys(r.stage for r in self.refs.values()))

    @property
    def sources(self) -> list[Ref]:
        """One reference per distinct set of upstream jobs read."""
        return list({r.source: r for r in self.refs.values()}.values())


@dataclass(frozen=True)
class JobSpec:
    """One job of a study: what runs, with which options, and what it reads."""

    id: str
    stage: str
    job: str
    options: dict[str, Any]  # references as "@<job id>/<path>"
    labels: dict[str, Any]  # sweep values, "<stage>.<axis>", inherited from what it reads
    deps: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "stage": self.stage, "job": self.job, "options": self.options,
                "labels": self.labels, "deps": list(self.deps)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        return cls(d["id"], d["stage"], d["job"], d["options"], d["labels"], tuple(d["deps"]))


@dataclass
class Study:
    """A parsed, validated and expanded study file."""

    path: Path
    text: str
    name: str
    description: str
    stages: dict[str, Stage]
    jobs: list[JobSpec]
    max_jobs: int | None = None  # [study] max_jobs: the size the file allows (else MAX_JOBS)

    @property
    def by_id(self) -> dict[str, JobSpec]:
        return {j.id: j for j in self.jobs}


def load(path: str | os.PathLike) -> Study:
    """Read, validate and expand a study file (every job's config is built and checked)."""
    path = Path(path)
    if path.is_dir():
        raise StudyError(f"{path} is a directory; name a study file (.toml), e.g. "
                         "examples/lmc.toml")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StudyError(f"study file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StudyError(f"cannot read study file {path}: {e}") from None
    return parse(text, path)


def to_toml(study: dict[str, dict[str, Any]]) -> str:
    """The text of a study file from its tables (for studies written by code): each value a
    string, number, boolean or list of them, or a sub-table (`sweep`)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float, str)):
            return json.dumps(v)  # a JSON string or number is a TOML basic string or number
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"cannot write {type(v).__name__} to a study file")

    lines: list[str] = []
    for table, entries in study.items():
        subs = {k: v for k, v in entries.items() if k == "sweep"}
        lines.append(f"[{table}]")
        lines += [f"{k} = {value(v)}" for k, v in entries.items() if k not in subs]
        for k, v in subs.items():
            lines += ["", f"[{table}.{k}]"] + [f"{kk} = {value(vv)}" for kk, vv in v.items()]
        lines.append("")
    return "\n".join(lines)


def parse(text: str, path: str | os.PathLike = artefacts.STUDY_FILE.name) -> Study:
    """A study from the text of a study file (`path` names it in messages)."""
    path = Path(path)
    where = path.name
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{where}: not valid TOML ({e})") from None
    head = data.pop("study", {})
    if not isinstance(head, dict):
        raise StudyError(f"{where}: 'study' must be a table ([study] with name, description)")
    for key in head:
        if key not in STUDY_KEYS:
            raise StudyError(f"{where}: [study] has no key {key!r}{_near(key, STUDY_KEYS)}; it "
                             f"takes {', '.join(sorted(STUDY_KEYS))}")
    name = head.get("name", path.stem)
    description = head.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise StudyError(f"{where}: [study] {key} must be a string, got {value!r}")
    if not SAFE_NAME.match(name):
        said = "[study] name" if "name" in head else "the study's name (from its file name)"
        raise StudyError(f"{where}: {said} {name!r} becomes a directory name: use letters, "
                         "digits, '.', '_' or '-', not starting with '.' (set [study] name = "
                         "\"my-study\")")
    max_jobs = head.get("max_jobs")
    if max_jobs is not None and (not isinstance(max_jobs, int) or isinstance(max_jobs, bool)
                                 or max_jobs < 1):
        raise StudyError(f"{where}: [study] max_jobs must be an integer ≥ 1, got {max_jobs!r}")
    if not data:
        raise StudyError(f"{where}: no stages; add a table per stage, e.g. [train] with "
                         "job = \"train\"")
    stages = {}
    for stage_name, table in data.items():
        if not isinstance(table, dict):
            raise StudyError(f"{where}: top-level key {stage_name!r} must be a stage table "
                             f"([{stage_name}]), got {table!r}")
        stages[stage_name] = _stage(where, stage_name, table)
    order = _order(where, stages)
    jobs: list[JobSpec] = []
    by_stage: dict[str, list[JobSpec]] = {}
    configs: dict[str, Any] = {}  # job id → its config (what a reader's references are checked by)
    for s in order:
        by_stage[s] = _expand(where, stages[s], by_stage, configs)
        jobs.extend(by_stage[s])
    return Study(path, text, name, description, {s: stages[s] for s in order}, jobs, max_jobs)


def _near(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _stage(where: str, name: str, table: dict[str, Any]) -> Stage:
    if not STAGE_NAME.match(name):
        raise StudyError(f"{where}: stage name {name!r} must be letters, digits, '_' or '-'")
    at = f"{where}: [{name}]"
    kind = table.get("job", name)
    if not isinstance(kind, str):
        raise StudyError(f"{at} job must be a job name, got {kind!r}")
    if kind not in job_names():
        hint = "" if "job" in table else "; name its job kind with job = \"...\""
        raise StudyError(f"{at} unknown job kind {kind!r}{_near(kind, job_names())}{hint} "
                         f"(job kinds: {', '.join(k for k in job_names() if k not in NOT_IN_STUDIES)})")
    if kind in NOT_IN_STUDIES:
        raise StudyError(f"{at} job {kind!r} cannot be a stage of a study ({NOT_IN_STUDIES[kind]})")
    job = get_job(kind)
    infos = {i.name: i for i in config_fields(job.config)}

    def option_key(key: str, in_: str = "") -> str:
        key_ = key.replace("-", "_")
        if key_ in RUNNER_OPTIONS and key_ in infos:
            raise StudyError(f"{at} {in_}{key}: the runner sets {key} for every job; remove it")
        if key_ == "out":
            raise StudyError(f"{at} {in_}out: the runner chooses each job's output "
                             "(jobs/<id>/out in the study directory); remove it")
        if key_ not in infos:
            raise StudyError(f"{at} {in_}{key}: {kind} has no option {key!r}"
                             f"{_near(key_, infos)}")
        return key_

    options: dict[str, Any] = {}
    axes: list[list[dict[str, Any]]] = []
    swept: dict[str, str] = {}
    seed_fields: tuple[str, ...] = ()
    sweep = table.get("sweep", {})
    if not isinstance(sweep, dict):
        raise StudyError(f"{at} sweep must be a table ([{name}.sweep] with grid, zip, seeds)")
    for key in sweep:
        if key not in SWEEP_KEYS:
            raise StudyError(f"{at} sweep.{key}: unknown sweep key{_near(key, SWEEP_KEYS)}; a "
                             f"sweep takes {', '.join(sorted(SWEEP_KEYS))}")
    for key, value in table.items():
        if key in ("job", "sweep"):
            continue
        if isinstance(value, dict):
            raise StudyError(f"{at} {key}: an option value cannot be a table (sweep it with "
                             f"[{name}.sweep] grid = {{ {key} = [...] }})")
        options[option_key(key)] = value
    for key, value in sweep.items():
        if key == "grid":
            if not isinstance(value, dict) or not value:
                raise StudyError(f"{at} sweep.grid must be a table of lists, e.g. grid = "
                                 "{ lr = [0.1, 0.01] }")
            for k, vs in value.items():
                k_ = option_key(k, "sweep.grid.")
                _sweep_values(at, f"sweep.grid.{k}", vs)
                _claim(at, swept, k_, f"sweep.grid.{k}")
                axes.append([{k_: v} for v in vs])
        elif key == "zip":
            groups = value if isinstance(value, list) else [value]
            for gi, group in enumerate(groups):
                label = "sweep.zip" if len(groups) == 1 else f"sweep.zip[{gi}]"
                if not isinstance(group, dict) or not group:
                    raise StudyError(f"{at} {label} must be a table of equal-length lists, e.g. "
                                     "zip = { batch_size = [32, 128], lr = [0.05, 0.2] }")
                lengths = {}
                keys = []
                for k, vs in group.items():
                    k_ = option_key(k, f"{label}.")
                    _sweep_values(at, f"{label}.{k}", vs)
                    _claim(at, swept, k_, f"{label}.{k}")
                    lengths[k] = len(vs)
                    keys.append((k_, vs))
                if len(set(lengths.values())) > 1:
                    raise StudyError(f"{at} {label}: lists of different lengths cannot be zipped "
                                     f"({', '.join(f'{k}: {n}' for k, n in lengths.items())}); "
                                     "give each the same number of values, or use grid")
                n = next(iter(lengths.values()))
                axes.append([{k_: vs[i] for k_, vs in keys} for i in range(n)])
        elif key == "seeds":
            _sweep_values(at, "sweep.seeds", value)
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in value):
                raise StudyError(f"{at} sweep.seeds must be integers >= 0, got {value!r}")
            if len(set(value)) != len(value):
                raise StudyError(f"{at} sweep.seeds repeats a seed: {value!r}")
            fields = sweep.get("seed_fields")
            if fields is None:
                fields = [n for n in infos if n == "seed" or n.endswith("_seed")]
            if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
                raise StudyError(f"{at} sweep.seed_fields must be a list of option names, got "
                                 f"{fields!r}")
            seed_fields = tuple(option_key(f, "sweep.seed_fields: ") for f in fields)
            if not seed_fields:
                raise StudyError(f"{at} sweep.seeds: {kind} has no seed option; name the options the "
                                 "seed sets with seed_fields = [...]")
            for f in seed_fields:
                _claim(at, swept, f, "sweep.seeds")
            axes.append([{"seed": v} for v in value])
        elif key == "seed_fields":
            if "seeds" not in sweep:
                raise StudyError(f"{at} sweep.seed_fields without seeds; add seeds = [0, 1, 2]")
    for k in swept:
        if k in options:
            raise StudyError(f"{at} {k} is both a fixed option and swept ({swept[k]}); keep one")
    refs: dict[str, Ref] = {}
    for key, value in list(options.items()) + [(k, v) for ax in axes for a in ax
                                               for k, v in a.items()]:
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v.startswith("@"):
                refs[v] = _ref(at, key, v)
    return Stage(name, kind, options, axes, seed_fields, refs)


def _sweep_values(at: str, key: str, values: Any) -> None:
    if not isinstance(values, list) or not values:
        raise StudyError(f"{at} {key} must be a non-empty list of values, got {values!r}")


def _claim(at: str, swept: dict[str, str], key: str, where: str) -> None:
    if key in swept:
        raise StudyError(f"{at} {key} is swept twice ({swept[key]} and {where}); sweep each "
                         "option in one place")
    swept[key] = where


def _ref(at: str, key: str, value: str) -> Ref:
    m = REF.match(value)
    if not m:
        raise StudyError(f"{at} {key}: {value!r} is not a reference; write \"@stage/path\" "
                         "(e.g. \"@train/a/model.safetensors\") or \"@stage[seed]/path\"")
    gather, select = [], []
    for item in (g.strip() for g in (m.group(2) or "").split(",")):
        if not item:
            continue
        axis, sep, text = item.partition("=")
        if not sep:
            gather.append(axis.strip())
            continue
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: a string
        select.append((axis.strip(), value))
    path = m.group(3) or ""
    # Every output stays inside the study directory: a reference names a path inside the job's
    # output, never above it or elsewhere.
    if path and (path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/"))
                 or "\\" in path or "\n" in path):
        raise StudyError(f"{at} {key}: {value!r} must name a path inside the stage's output "
                         "(no '..', '.', empty parts or leading '/'), e.g. "
                         "\"@train/a/model.safetensors\"")
    return Ref(m.group(1), tuple(gather), tuple(select), path)


def _order(where: str, stages: dict[str, Stage]) -> list[str]:
    """The stages in an order where each comes after the stages it reads (file order kept)."""
    for s in stages.values():
        for up in s.upstream:
            if up not in stages:
                raise StudyError(f"{where}: [{s.name}] reads @{up}, a stage the study does not "
                                 f"define{_near(up, stages)} (stages: {', '.join(stages)})")
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = trail[trail.index(name):] + [name]
            raise StudyError(f"{where}: stages {' → '.join(f'[{c}]' for c in cycle)} read each "
                             "other in a cycle; a stage can read only earlier stages' outputs")
        state[name] = "active"
        for up in stages[name].upstream:
            visit(up, trail + [name])
        state[name] = "done"
        order.append(name)

    for name in stages:
        visit(name, [])
    return order


def _expand(where: str, stage: Stage, by_stage: dict[str, list[JobSpec]],
            configs: dict[str, Any]) -> list[JobSpec]:
    """The stage's jobs: its sweep × the jobs it reads (paired where their labels agree)."""
    at = f"{where}: [{stage.name}]"
    # Each source (a stage's jobs, maybe selected, maybe gathered) contributes groups of its
    # jobs: one job each unless gathered. Groups pair up where their sweep values agree.
    choices: list[list[tuple[tuple, dict[str, Any], list[JobSpec]]]] = []
    for ref in stage.sources:
        up = ref.stage
        jobs = by_stage[up]
        axes = sorted({k for j in jobs for k in j.labels})

        def qualify(axis: str) -> str:
            name = axis if "." in axis else f"{up}.{axis}"
            if name not in axes:
                raise StudyError(f"{at} reads @{up}[{axis}...]: {axis!r} is not a sweep axis of "
                                 f"[{up}] (its axes: {', '.join(axes) or 'none'})")
            return name

        gathered = tuple(qualify(g) for g in ref.gather)
        selected = {qualify(a): v for a, v in ref.select}
        jobs = [j for j in jobs if all(j.labels.get(a) == v for a, v in selected.items())]
        if not jobs:
            raise StudyError(f"{at} reads @{up} with "
                             f"{', '.join(f'{a}={v!r}' for a, v in ref.select)}: no job of "
                             f"[{up}] has these sweep values")
        groups: dict[str, tuple[dict[str, Any], list[JobSpec]]] = {}
        for j in jobs:
            key_labels = {k: v for k, v in j.labels.items()
                          if k not in gathered and k not in selected}
            groups.setdefault(json.dumps(key_labels, sort_keys=True), (key_labels, []))[1].append(j)
        choices.append([(ref.source, labels, members) for labels, members in groups.values()])
    combos: list[tuple[dict[str, Any], dict[str, list[JobSpec]]]] = []
    for pick in itertools.product(*choices):
        labels: dict[str, Any] = {}
        ok = True
        for _, group_labels, _ in pick:
            for k, v in group_labels.items():
                if labels.get(k, v) != v:
                    ok = False
                labels[k] = v
        if ok:
            combos.append((labels, {source: members for source, _, members in pick}))
    if stage.upstream and not combos:
        raise StudyError(f"{at} the stages it reads ({', '.join(stage.upstream)}) have no jobs "
                         "whose sweep values agree, so it has nothing to run")
    job = get_job(stage.job)
    out: list[JobSpec] = []
    seen: dict[str, dict[str, Any]] = {}
    for inherited, picked in combos:
        for assignment in itertools.product(*stage.axes):
            own: dict[str, Any] = {}
            for a in assignment:
                own.update(a)
            options = dict(stage.options)
            labels = dict(inherited)
            for k, v in own.items():
                labels[f"{stage.name}.{k}"] = v
                if k == "seed":
                    for f in stage.seed_fields:
                        many = next(i.many for i in config_fields(job.config) if i.name == f)
                        options[f] = [v] if many else v
                else:
                    options[k] = v
            deps: list[str] = []
            options = {k: _resolve(at, k, v, stage, picked, deps, configs)
                       for k, v in options.items()}
            built = _build(at, job, options)
            for point, updates in built.expand():
                point_options = {**options, **updates}
                config = _build(at, job, point_options) if updates else built
                settings = config.to_dict(settings_only=True)
                digest = hashlib.sha256(json.dumps({"job": stage.job, "settings": settings},
                                                   sort_keys=True).encode()).hexdigest()
                job_id = f"{stage.name}-{digest[:10]}"
                swept = {**own, **point}
                if job_id in seen:
                    raise StudyError(f"{at} two of its jobs have the same settings "
                                     f"({seen[job_id]} and {swept}): a sweep value repeats or "
                                     "does not reach the job")
                seen[job_id] = swept
                preflight(at, config, job_id, swept)
                configs[job_id] = config
                out.append(JobSpec(job_id, stage.name, stage.job, point_options,
                                   {**labels, **{f"{stage.name}.{k}": v for k, v in point.items()}},
                                   tuple(dict.fromkeys(deps))))
    return out


def preflight(at: str, config: Any, job_id: str, own: dict[str, Any] | None = None,
              here: bool = False) -> None:
    """Refuse what the job would refuse when it runs (its data, shift, model; `here`: its
    device on this machine), naming the option and the job."""
    try:
        config.preflight(here)
    except OptionRefused as e:
        swept = "".join(f", {k}={v}" for k, v in (own or {}).items())
        raise StudyError(f"{at} {e.option}: {e} (job {job_id}{swept})") from None
    except UsageError as e:
        raise StudyError(f"{at} {e} (job {job_id})") from None


def _check_written(at: str, key: str, ref: Ref, up: JobSpec, config: Any) -> None:
    """Refuse a reference to a file the upstream job never writes."""
    if not ref.path:
        return
    output = get_job(up.job).output
    if output is not None and output.kind == "file":
        raise StudyError(f"{at} {key}: @{ref.stage}/{ref.path}: [{ref.stage}] ({up.job}) writes "
                         f"one file; read it as \"@{ref.stage}\"")
    if output is None or output.holds(config, ref.path):
        return
    files = output.files(config) or []
    shown = ", ".join(files[:SHOWN_FILES]) + (", ..." if len(files) > SHOWN_FILES else "")
    raise StudyError(f"{at} {key}: @{ref.stage}/{ref.path}: [{ref.stage}] ({up.job}, job "
                     f"{up.id}) never writes {ref.path!r}{_near(ref.path, files)}; it writes "
                     f"{shown}")


def _resolve(at: str, key: str, value: Any, stage: Stage, picked: dict[tuple, list[JobSpec]],
             deps: list[str], configs: dict[str, Any]) -> Any:
    """An option value with its references made "@<job id>/<path>" (each checked to be a file
    the job it reads writes)."""
    if isinstance(value, list):
        return [x for v in value
                for x in _as_list(_resolve(at, key, v, stage, picked, deps, configs))]
    if not (isinstance(value, str) and value in stage.refs):
        return value
    ref = stage.refs[value]
    jobs = picked[ref.source]
    for j in jobs:
        _check_written(at, key, ref, j, configs[j.id])
    deps.extend(j.id for j in jobs)
    paths = [f"@{j.id}" + (f"/{ref.path}" if ref.path else "") for j in jobs]
    return paths if ref.gather else paths[0]


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def _build(at: str, job, options: dict[str, Any]):
    """The job's config from these options, its errors named as the study file's."""
    try:
        return job.config.from_dict(options)
    except ConfigError as e:
        got = "" if e.value is _MISSING else f", got {e.value!r}"
        if e.requirement == "is required":
            raise StudyError(f"{at} {e.name} is required by {job.name}; set it") from None
        raise StudyError(f"{at} {e.name} {e.requirement}{got}") from None
    except UsageError as e:
        raise StudyError(f"{at} {e}") from None

