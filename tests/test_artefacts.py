"""The file contract: tables keep their columns, readers give back what writers wrote."""

from __future__ import annotations

import pytest

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
