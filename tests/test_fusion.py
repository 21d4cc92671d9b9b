"""modeconn fusion: the fusion protocol as a study, summarised in the reference's table."""

from __future__ import annotations

import csv

import pytest
import tomllib

from modeconn import jobs, studies
from modeconn.studies import parse
from modeconn.studies.protocols.fusion import FusionConfig
from modeconn.studies.spec import to_toml

SMALL = dict(models=("mlp",), seeds=(0, 1), epochs=2, curve_epochs=1, dataset="digits")
# The ids of SMALL's jobs as the command gave them before it read its study from
# examples/fusion.toml: fusion directories written then resume without running a job again.
SMALL_IDS = [
    "train-4404cabac8", "train-ab4a363339", "joint-81a7e85933", "joint-868e9297e9",
    "ensemble-b9b7d5bd00", "ensemble-bcc93a76b8",
    "fuse-121039ca1f", "fuse-5645be0782", "fuse-d4729f15a6", "fuse-065f8f5e7d",
    "fuse-d305640a67", "fuse-ed8b05667f", "fuse-26468bd54a", "fuse-bcde45dc81",
    "fuse-e40de82bb0", "fuse-a65ce385db",
    "fuse_ot_activations-6fb86fecc6", "fuse_ot_activations-bfa9ac9cb9",
    "finetuned-12103105cc", "finetuned-e3ff52ceea", "finetuned-ff54b34e7f",
    "finetuned-63fc0aa16e",
]
# The references' procedures (issue 25: MPF's, then OT's), added after SMALL_IDS: new jobs
# beside the old.
REFERENCE_IDS = [
    "fuse_mpf_reference-2665f20d20", "fuse_mpf_reference-2ef7a95db0",
    "finetuned_mpf_reference-8e761efbce", "finetuned_mpf_reference-e0e814703e",
    "finetuned_mpf_reference-5609d9a46b", "finetuned_mpf_reference-b29100f6ed",
    "fuse_otfusion-894ccf8f62", "fuse_otfusion-48aa1df3dc",
    "fuse_otfusion_readme-2d67326166", "fuse_otfusion_readme-da7aa331d1",
]


def study_before(c: FusionConfig) -> dict:
    """The study's tables as the command wrote them out before it read examples/fusion.toml,
    kept frozen: what the file with the command's options must still give."""
    training = {"dataset": c.dataset, "epochs": c.epochs, "optimizer": "sgd", "lr": c.lr}
    if c.data_dir:
        training["data_dir"] = c.data_dir
    sweep = {"seeds": list(c.seeds), "grid": {"model": list(c.models)}}
    pair = {k: f"@train/{k}/model.safetensors" for k in ("a", "b")}
    return {
        "study": {"name": "fusion", "description": f"fusion on {c.dataset}, {c.shift}"},
        "train": {**training, "shift": c.shift, "init": "different", "sweep": sweep},
        "joint": {"job": "train", **training, "sweep": sweep},
        "ensemble": {"checkpoints": [pair["a"], pair["b"]]},
        "fuse": {"job": "merge", **pair, "epochs": c.curve_epochs,
                 "sweep": {"grid": {"method": ["avg", "ot", "wm", "ste", "mpf"]}}},
        "fuse_ot_activations": {"job": "merge", **pair, "method": "ot", "cost": "activations"},
        "finetuned": {"job": "merge", **pair, "finetune_epochs": c.curve_epochs,
                      "sweep": {"grid": {"method": ["avg", "ot"]}}},
    }


def with_reference(tables: dict) -> dict:
    """`study_before`'s tables and the references' procedures (issue 25): MPF's two stages and
    OT under sidak/otfusion's two presets."""
    pair = {k: f"@train/{k}/model.safetensors" for k in ("a", "b")}
    return {**tables,
            "fuse_mpf_reference": {"job": "merge", **pair, "method": "mpf",
                                   "preset": "mpf-reference"},
            "finetuned_mpf_reference": {"job": "merge", **pair, "finetune_epochs": 10,
                                        "preset": "mpf-reference",
                                        "sweep": {"grid": {"method": ["avg", "ot"]}}},
            "fuse_otfusion": {"job": "merge", **pair, "preset": "otfusion"},
            "fuse_otfusion_readme": {"job": "merge", **pair, "preset": "otfusion-readme"}}


def built(tables: dict) -> studies.Study:
    """The study of these tables, parsed as `modeconn fusion` parses them."""
    return parse(to_toml(tables), "fusion.toml")


def test_the_fusion_study_keeps_the_job_ids_it_had():
    assert [j.id for j in built(FusionConfig(**SMALL).study()).jobs] == SMALL_IDS + REFERENCE_IDS


@pytest.mark.parametrize("options", [{}, SMALL, {"data_dir": "/data", "lr": 0.1,
                                                 "shift": "iid:50,50", "curve_epochs": 3}],
                         ids=["defaults", "small", "data-dir"])
def test_the_fusion_study_is_the_one_the_command_built_before(options):
    config = FusionConfig(**options)
    now, before = built(config.study()), built(with_reference(study_before(config)))
    assert [j.to_dict() for j in now.jobs] == [j.to_dict() for j in before.jobs]
    assert now.stages == before.stages and now.description == before.description


def test_the_option_defaults_are_the_example_files_values():
    """The file is the one source of the defaults: with them the command runs it unchanged."""
    example = tomllib.loads((studies.EXAMPLES / "fusion.toml").read_text())
    tables = FusionConfig().study()
    assert tables["study"].pop("description") == "fusion on digits, label-skew:4=100,0-3=10,5-9=10"
    del example["study"]["description"]
    assert tables == example


def test_the_fusion_study_is_read_from_the_shipped_file(monkeypatch, tmp_path):
    text = (studies.EXAMPLES / "fusion.toml").read_text()
    (tmp_path / "fusion.toml").write_text(text.replace('optimizer = "sgd"', 'optimizer = "adam"'))
    monkeypatch.setattr(studies, "EXAMPLES", tmp_path)
    specs = built(FusionConfig(**SMALL).study()).jobs
    assert {j.options["optimizer"] for j in specs if j.job == "train"} == {"adam"}


@pytest.mark.slow
def test_the_fusion_table_has_every_row_filled_and_a_rerun_changes_nothing(tmp_path):
    pytest.importorskip("ot")
    out = tmp_path / "fusion"
    kw = dict(models=["mlp"], seeds=[0, 1], epochs=2, curve_epochs=1, jobs=2, quiet=True)
    r = jobs.run("fusion", out=out, **kw)
    assert r.exit_code == 0 and r.run.ran == len(r.run.study.jobs) == 32
    cells = list(csv.DictReader(open(out / "model_accuracies.csv")))
    rows = {c["row"] for c in cells}
    assert len(rows) == 17 and all(int(c["n"]) == 2 for c in cells)  # every row, both seeds
    acc = {c["row"]: float(c["mean"]) for c in cells if c["metric"] == "test accuracy %"}
    assert acc["Joint"] > acc["A"] and acc["ensemble(A, B)"] > acc["A"]
    md = (out / "model_accuracies.md").read_text()
    assert "| MPF |" in md and "| AVG fine-tuned (MPF's budget) |" in md
    assert "| MPF, reference procedure |" in md
    assert "| AVG fine-tuned (reference MPF's budget) |" in md
    assert "| OT, sidak/otfusion's defaults |" in md and "| OT, sidak/otfusion's README |" in md
    subsets = list(csv.DictReader(open(out / "per_subset.csv")))
    assert {s["on"] for s in subsets} == {"A's subset", "B's subset"}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = jobs.run("fusion", out=out, **kw)
    assert again.run.ran == 0 and again.table == r.table
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
