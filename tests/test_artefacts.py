"""The file contract: tables keep their columns, readers give back what writers wrote."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import modeconn
from modeconn import artefacts


def test_a_table_writes_its_columns_in_order_and_reads_numbers_back(tmp_path):
    rows = [{"t": 0.0, "split": "test", "loss": 0.25, "acc": 1, "length": 0.0, "extra": "x"},
            {"split": "train", "t": 0.5, "loss": float("nan"), "acc": 0.5}]
    artefacts.PATH.write(tmp_path, rows)
    header = (tmp_path / "path.csv").read_text().splitlines()[0]
    assert header == "t,split,loss,acc,length"
    back = artefacts.PATH.read(tmp_path)
    assert back[0] == {"t": 0.0, "split": "test", "loss": 0.25, "acc": 1, "length": 0.0}
    assert back[1]["length"] is None and back[1]["loss"] != back[1]["loss"]  # NaN stays NaN


def test_documents_round_trip_and_unchanged_files_are_not_rewritten(tmp_path):
    doc = {"job": "interpolate", "config": {"points": 3, "splits": ["test"]}}
    assert artefacts.CONFIG.write(tmp_path, doc)
    mtime = artefacts.CONFIG.path(tmp_path).stat().st_mtime_ns
    assert not artefacts.CONFIG.write(tmp_path, doc, changed_only=True)
    assert artefacts.CONFIG.path(tmp_path).stat().st_mtime_ns == mtime
    assert artefacts.CONFIG.read(tmp_path) == doc


@pytest.mark.parametrize("label", ["before", "after"])
def test_alignment_files_share_the_path_columns(label):
    assert artefacts.aligned_path(label).name == f"path_{label}.csv"
    assert artefacts.aligned_path(label).columns == artefacts.PATH.columns
    assert artefacts.aligned_barrier(label).name == f"barrier_{label}.json"


# Names that look like files but are no file of the contract, by module: BigEarthNet's release
# files and the reader's cache (formats of the data layer, read and written by that one module),
# and the example study files shipped in studies/examples (inputs, not outputs). Figures (.png,
# .pdf) are drawn where they are named and are not scanned.
NOT_CONTRACT = {
    "data/bigearthnet.py": {"train.csv", "val.csv", "test.csv", "_labels_metadata.json",
                            "meta.json", "names.txt", "skipped.csv", "unlisted.txt",
                            "excluded.txt"},
    "studies/protocols/demo.py": {"demo.toml", "demo-quick.toml"},
    # Hugging Face's save_pretrained layout (its files, read by load_hf), not modeconn's
    "models/hf.py": {"config.json", "model.safetensors", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json"},
    "studies/protocols/fusion.py": {"fusion.toml"},
    "studies/spec.py": {"lmc.toml"},  # "e.g. examples/lmc.toml" in a refusal
}
FILE_NAME = re.compile(r"(?:^|/)(\w[\w.-]*\.(?:json|csv|safetensors|sqlite|txt|toml|html|md))")


def hand_written_names(package: Path) -> list[str]:
    """Every string constant outside artefacts.py (not a docstring; the text of an f-string
    too) that is a file name or ends in '/' and one, as 'module:line: name'."""
    found = []
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package).as_posix()
        if module == "artefacts.py":
            continue
        allowed = NOT_CONTRACT.get(module, set())
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
                      and isinstance(node.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings:
                m = FILE_NAME.search(node.value)
                if m and m.end() == len(node.value) and m.group(1) not in allowed:
                    found.append(f"{module}:{node.lineno}: {m.group(1)}")
    return sorted(found, key=lambda f: (f.split(":")[0], int(f.split(":")[1])))


def test_no_module_but_artefacts_names_a_contract_file():
    """artefacts is the one writer and reader of the file contract: a file name spelled anywhere
    else is a file written or read by hand (name it in artefacts and go through its entry)."""
    found = hand_written_names(Path(modeconn.__file__).parent)
    assert found == [], "\n".join(found)


def test_the_scan_finds_a_hand_written_name(tmp_path):
    (tmp_path / "artefacts.py").write_text('METRICS = "metrics.csv"\n')
    (tmp_path / "job.py").write_text('"""Writes metrics.csv."""\n'
                                     'def f(out):\n    return out / "metrics.csv"  # by hand\n'
                                     'def g(out):\n    return out / f"{out}/summary.csv"\n'
                                     'def h(out):\n    return out / f"x_{out}.csv"\n')
    assert hand_written_names(tmp_path) == ["job.py:3: metrics.csv", "job.py:5: summary.csv"]
