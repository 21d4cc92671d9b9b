"""Language modelling: the `pydoc` text corpus, the language-model task, `--model gpt` from the
command line (train, interpolate, align, ensemble) and what text data refuses."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from modeconn.cli import main
from modeconn.data import DataSpec, dataset_shape, dataset_task, load_dataset, prepare_subsets
from modeconn.data.datasets import pydoc_text, pydoc_vocabulary
from modeconn.models import build_model, model_config
from modeconn.task import LANGUAGE_MODEL, TASKS

TINY = ["--model", "gpt", "--width", "32", "--depth", "1", "--quiet", "--device", "cpu"]
DATA = "pydoc:limit=256"


def test_corpus_is_deterministic():
    text, vocab = pydoc_text(), pydoc_vocabulary()
    assert vocab == "".join(sorted(set(text))) and len(set(vocab)) == len(vocab)
    assert text.startswith('The "assert" statement')  # the first of the sorted topics
    d = load_dataset("pydoc")
    n = len(text) // 65
    test = round(n * 0.1)
    assert d.task == "language-model" and d.num_classes == len(vocab)
    assert d.input_shape == (64,) and d.train_x.dtype == d.train_y.dtype == torch.int64
    assert d.train_x.shape == (min(4000, n - test), 64) and d.test_x.shape == (test, 64)
    first = "".join(vocab[i] for i in d.train_x[0]) + vocab[d.train_y[0, -1]]
    assert first == text[:65]
    assert torch.equal(d.train_x[0, 1:], d.train_y[0, :-1])
    # The test windows are the last ones, after every training window.
    assert "".join(vocab[i] for i in d.test_x[-1]) == text[(n - 1) * 65:n * 65 - 1]
    again = load_dataset("pydoc")
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)
    assert dataset_shape("pydoc:context=32,limit=10") == ((32,), len(vocab))
    assert dataset_task("pydoc") == "language-model"
    small = load_dataset("pydoc:context=32,limit=10")
    assert small.train_x.shape == (10, 32)


def test_task_matches_a_hand_computation():
    task = TASKS["language-model"]
    assert task is LANGUAGE_MODEL and task.score == "acc"
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(3, 5, 7, generator=g), torch.randint(0, 7, (3, 5), generator=g)
    logp = out.log_softmax(-1)
    hand = torch.stack([-sum(logp[b, t, y[b, t]] for t in range(5)) / 5 for b in range(3)])
    assert torch.allclose(task.losses(out, y), hand, atol=1e-6)
    assert torch.allclose(task.loss(out, y), hand.mean(), atol=1e-6)
    acc = (out.argmax(-1) == y).double().mean()
    m = task.metrics(task.totals(out, y), 3)
    assert m["loss"] == pytest.approx(float(hand.mean()), abs=1e-6)
    assert m["acc"] == pytest.approx(float(acc)) and m["ppl"] == pytest.approx(math.exp(m["loss"]))
    stacked = task.stacked_totals(torch.stack([out, 2 * out]), y)
    assert stacked["loss"][0].item() == pytest.approx(float(hand.sum()), abs=1e-5)
    assert stacked["acc"][0].item() == pytest.approx(float(acc) * 3)
    assert stacked["loss"][1].item() == pytest.approx(
        float(F.cross_entropy((2 * out).flatten(0, 1), y.flatten(), reduction="sum") / 5), abs=1e-4)
    probs = task.probabilities(out)
    scores = task.ensemble_scores(probs, y)
    assert scores["acc"] == pytest.approx(float(acc))
    assert scores["nll"] == pytest.approx(float(hand.mean()), abs=1e-6)
    pred, true, k = task.decisions(probs, y)
    assert pred.shape == true.shape == (15,) and k == 7


def test_pydoc_data_is_not_normalised_and_splits_at_random():
    a, b = prepare_subsets(DataSpec(dataset=DATA, shift="iid:50,50"))
    assert a.train_x.dtype == torch.int64 and a.mean == [] and a.task is LANGUAGE_MODEL
    assert len(a.train_x) + len(b.train_x) == 256
    rows = {tuple(r.tolist()) for r in a.train_x} & {tuple(r.tolist()) for r in b.train_x}
    assert not rows  # disjoint windows
    assert torch.equal(a.test_x, load_dataset(DATA).test_x)


def test_gpt_config():
    cfg = model_config("gpt", (16,), 11, width=32, depth=1, heads=2, rotary=True, mlp="swiglu")
    assert cfg["input_shape"] == [16] and cfg["num_classes"] == 11 and cfg["rotary"]
    model = build_model(cfg)
    assert model(torch.zeros(2, 16, dtype=torch.int64)).shape == (2, 16, 11)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    for seed in (1, 2):
        assert main(["train", *TINY, "--dataset", DATA, "--epochs", "1", "--lr", "0.1",
                     "--init-seed", str(seed), "--out", str(root / f"s{seed}")]) == 0
    return root, [root / f"s{s}" / "all" / "model.safetensors" for s in (1, 2)]


def test_train_writes_a_language_model(trained):
    root, (a, _) = trained
    assert a.is_file()
    row = (root / "s1" / "summary.csv").read_text().splitlines()
    summary = dict(zip(row[0].split(","), row[1].split(",")))
    vocab = len(pydoc_vocabulary())
    assert float(summary["test_loss"]) < math.log(vocab)
    config = json.loads((root / "s1" / "all" / "config.json").read_text())
    assert config["model"]["arch"] == "gpt" and config["model"]["input_shape"] == [64]


def test_interpolate_align_and_ensemble(trained, tmp_path):
    _, (a, b) = trained
    assert main(["interpolate", str(a), str(b), "--points", "3", "--splits", "test",
                 "--device", "cpu", "--out", str(tmp_path / "i")]) == 0
    barrier = json.loads((tmp_path / "i" / "barrier.json").read_text())
    assert math.isfinite(barrier["test"]["loss"]["linear"]["barrier"])
    assert main(["align", str(a), str(b), "--method", "wm", "--points", "3",
                 "--device", "cpu", "--out", str(tmp_path / "w")]) == 0
    after = json.loads((tmp_path / "w" / "barrier_after.json").read_text())
    assert math.isfinite(after["test"]["loss"]["linear"]["barrier"])
    assert main(["align", str(a), str(b), "--method", "am", "--points", "3", "--device", "cpu",
                 "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "aligned_b.safetensors").is_file()
    assert main(["ensemble", str(a), str(b), "--device", "cpu", "--out",
                 str(tmp_path / "e")]) == 0


def test_hessian_trace_of_a_language_model(trained):
    from modeconn.models import load_model
    from modeconn.paths.landscape import hessian_trace

    _, (a, _) = trained
    model, _ = load_model(a)
    d = load_dataset(DATA)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    out = hessian_trace(model, params, d.test_x[:16], d.test_y[:16], probes=2, batch_size=8,
                        task=LANGUAGE_MODEL)
    assert all(math.isfinite(v) for v in out.values() if isinstance(v, float))


@pytest.mark.parametrize("args, words", [
    (["--model", "gpt", "--dataset", "pydoc", "--shift", "domain:none|rotate=30"],
     "cannot apply to pydoc"),
    (["--model", "gpt", "--dataset", "pydoc", "--shift", "label-skew:0-4=80,5-9=20"],
     "use --shift none, or iid:50,50"),
    (["--model", "gpt", "--dataset", "pydoc", "--shift", "dirichlet:0.5"], "a text corpus"),
    (["--model", "gpt", "--dataset", "pydoc", "--normalise", "subset"], "--normalise subset"),
    (["--model", "gpt", "--dataset", "pydoc", "--bands", "B02"], "drop --bands"),
    (["--model", "gpt", "--dataset", "digits"], "gpt reads token ids"),
    (["--model", "mlp", "--dataset", "pydoc"], "use --model gpt on text data"),
    (["--model", "gpt", "--dataset", "pydoc", "--width", "30"], "not divisible by heads"),
])
def test_refusals(cli, tmp_path, args, words):
    rc, out, err = cli("train", *args, "--epochs", "1", "--quiet", "--out", tmp_path / "x")
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modeconn: error: ") and words in lines[0]
    assert not (tmp_path / "x").exists()
