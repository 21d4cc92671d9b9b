"""Checkpoints: exact round trip, and refusal of anything that is not a modeconn safetensors file
without ever unpickling it."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from modeconn.checkpoint import describe, load_checkpoint, save_checkpoint, save_model
from modeconn.errors import UsageError
from modeconn.models import build_model, load_model, model_config


def _model(name="resnet8", **kw):
    cfg = model_config(name, (3, 8, 8), 10, **kw)
    torch.manual_seed(0)
    model = build_model(cfg)
    # Non-trivial BatchNorm buffers, so buffers are checked too.
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 8, 8))
    return model.eval(), cfg


class Evil:
    """Unpickling this creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("name,kw", [("resnet8", {"width": 0.5}), ("mlp", {"width": 16}),
                                     ("convnet", {"width": 0.25})])
def test_round_trip_exact(tmp_path, name, kw):
    model, cfg = _model(name, **kw)
    path = save_model(tmp_path / "m.safetensors", model, cfg, seed=3, data={"dataset": "digits"})
    loaded, ckpt = load_model(path)
    sd, ld = model.state_dict(), loaded.state_dict()
    assert list(sd) == list(ld)
    for k in sd:
        assert sd[k].dtype == ld[k].dtype and torch.equal(sd[k], ld[k]), k
    assert ckpt.architecture == cfg
    assert ckpt.kind == "model"
    assert ckpt.meta["seed"] == 3 and ckpt.meta["data"] == {"dataset": "digits"}
    assert "modeconn_version" in ckpt.meta
    x = torch.randn(5, 3, 8, 8)
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # Written atomically: no temporary files left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_describe_lists_architecture(tmp_path):
    model, cfg = _model("mlp", width=16)
    ckpt = load_checkpoint(save_model(tmp_path / "m.safetensors", model, cfg))
    text = describe(ckpt)
    assert "architecture" in text and '"mlp"' in text and "model" in text


def test_evil_payload_would_create_marker(tmp_path):
    """Sanity check of the payload the refusal tests rely on."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Evil(marker)))
    assert marker.exists()


def _assert_refused(path, marker, match=None):
    with pytest.raises(UsageError, match=match):
        load_checkpoint(path)
    with pytest.raises(UsageError, match=match):
        load_model(path)
    assert not os.path.exists(marker), "the file was unpickled"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_raw_pickle_refused_without_unpickling(tmp_path, protocol):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weight": Evil(marker)}, protocol=protocol))
    _assert_refused(path, marker)


@pytest.mark.parametrize("zipfile", [True, False])
def test_torch_save_refused_without_unpickling(tmp_path, zipfile):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3), "evil": Evil(marker)}, path,
               _use_new_zipfile_serialization=zipfile)
    _assert_refused(path, marker, match="torch.save|pickle")


def test_random_bytes_refused(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "noise.safetensors"
    for n in (3, 64, 5000):
        data = bytes(torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).tolist())
        path.write_bytes(data)
        with pytest.raises(UsageError):
            load_checkpoint(path)


def test_empty_and_missing_refused(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(UsageError):
        load_checkpoint(path)
    with pytest.raises(UsageError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(UsageError, match="is a directory"):  # not "not found": it is there
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.99])
def test_truncated_safetensors_refused(tmp_path, keep):
    model, cfg = _model("mlp", width=16)
    path = save_model(tmp_path / "m.safetensors", model, cfg)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(UsageError):
        load_checkpoint(path)


def test_corrupt_header_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    body = b"{not json at all" + b" " * 40
    path.write_bytes(len(body).to_bytes(8, "little") + body + bytes(64))
    with pytest.raises(UsageError):
        load_checkpoint(path)


def test_safetensors_without_modeconn_metadata_refused(tmp_path):
    sd = build_model(model_config("mlp", (1, 8, 8), 10, width=8)).state_dict()
    plain = tmp_path / "plain.safetensors"
    save_file(dict(sd), str(plain))
    with pytest.raises(UsageError, match="metadata"):
        load_checkpoint(plain)
    other = tmp_path / "other.safetensors"
    save_file(dict(sd), str(other), metadata={"format": "pt"})
    with pytest.raises(UsageError, match="metadata"):
        load_model(other)


def test_mismatched_tensors_refused(tmp_path):
    model, _ = _model("mlp", width=16)
    wrong_cfg = model_config("mlp", (3, 8, 8), 10, width=32)
    path = save_model(tmp_path / "m.safetensors", model, wrong_cfg)
    with pytest.raises(UsageError, match="do not match"):
        load_model(path)


def test_kind_checked(tmp_path):
    path = save_checkpoint(tmp_path / "s.safetensors", {"x": torch.zeros(2)}, kind="train-state",
                           architecture={})
    assert load_checkpoint(path).kind == "train-state"
    with pytest.raises(UsageError, match="train-state"):
        load_model(path)
    with pytest.raises(UsageError, match="expected a curve"):
        load_checkpoint(path, kind="curve")


def _header_len(path):
    return int.from_bytes(path.read_bytes()[:8], "little")


def _checkpoint_with_header_len(tmp_path, target):
    """A valid model checkpoint whose safetensors header is exactly `target` bytes long."""
    model = build_model(model_config("mlp", (1, 4, 4), 2, width=2))
    cfg = model_config("mlp", (1, 4, 4), 2, width=2)
    path = tmp_path / f"h{target}.safetensors"
    save_model(path, model, cfg, note="")
    base = _header_len(path)
    for k in range(max(0, target - base - 16), target - base + 16):
        save_model(path, model, cfg, note="x" * k)
        if _header_len(path) == target:
            return path, model
    raise AssertionError(f"could not build a header of {target} bytes")


@pytest.mark.parametrize("target", [
    0x380,   # first bytes 80 03: looks exactly like a protocol-3 pickle
    0x480,   # first bytes 80 04: looks exactly like a protocol-4 pickle
    0x4B50,  # first bytes 'PK': looks like a zip (torch.save) file
])
def test_valid_checkpoint_is_not_mistaken_for_pickle_or_zip(tmp_path, target):
    """The header length is a little-endian u64, so its first byte can be anything; a valid
    safetensors file must load whatever its header length is."""
    path, model = _checkpoint_with_header_len(tmp_path, target)
    assert path.read_bytes()[:2] == target.to_bytes(2, "little")
    loaded, ckpt = load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 loaded.state_dict().values(), strict=True))


def test_every_header_length_residue_loads(tmp_path):
    """Checkpoints of every header length modulo 256 load (headers are padded to 8 bytes)."""
    model = build_model(model_config("mlp", (1, 4, 4), 2, width=2))
    cfg = model_config("mlp", (1, 4, 4), 2, width=2)
    path = tmp_path / "m.safetensors"
    residues = set()
    for k in range(0, 256 + 8):
        save_model(path, model, cfg, note="y" * k)
        r = _header_len(path) % 256
        if r in residues:
            continue
        residues.add(r)
        load_model(path)
    assert len(residues) == 32


def test_equal_checkpoints_are_equal_files(tmp_path):
    """Saving the same tensors and metadata twice gives the same bytes (safetensors alone
    orders metadata keys by hash, differently from one write to the next)."""
    import hashlib
    meta = {f"key{i}": i for i in range(12)}
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "i": torch.arange(3), "h": torch.ones(1).half()}
    digests = set()
    for i in range(4):
        save_checkpoint(tmp_path / f"{i}.safetensors", tensors, architecture={"a": 1}, **meta)
        digests.add(hashlib.sha256((tmp_path / f"{i}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    ckpt = load_checkpoint(tmp_path / "0.safetensors")
    assert all(torch.equal(ckpt.tensors[k], v) for k, v in tensors.items())
    assert {k: ckpt.meta[k] for k in meta} == meta


def test_checkpoint_is_a_floor_that_builds_no_module():
    """Reading and writing checkpoints imports only floors (the model zoo rebuilds modules)."""
    import ast

    import modeconn.checkpoint

    tree = ast.parse(open(modeconn.checkpoint.__file__).read())
    imported = {name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level > 0
                for name in ([node.module] if node.module else [a.name for a in node.names])}
    floors = {"_version", "artefacts", "errors", "io", "options", "params", "runtime", "task"}
    assert imported <= floors, imported - floors


def test_rebuild_refuses_a_damaged_architecture(tmp_path):
    from modeconn.models import rebuild

    model, cfg = _model("mlp", width=16)
    path = save_model(tmp_path / "m.safetensors", model, {**cfg, "widths": "x"})
    with pytest.raises(UsageError, match="metadata architecture"):
        rebuild(load_checkpoint(path))
