"""Hugging Face models: built from tiny configs, read from save_pretrained directories, traced."""

import json
import sys

import pytest
import torch
from torch import fx
from torch.func import functional_call
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils._pytree import tree_leaves

pytest.importorskip("transformers")

from modeconn.errors import UsageError  # noqa: E402
from modeconn.graph import read, trace_module  # noqa: E402
from modeconn.models.hf import HFLogits, hf_model, load_hf  # noqa: E402

TINY = {
    "vit": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                image_size=16, patch_size=4, num_labels=5),
    "bert": dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64, num_labels=3),
    "bert-model": dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=64),
    "gpt2": dict(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64),
}
SHAPES = {"vit": (3, 5), "bert": (3, 3), "bert-model": (3, 11, 32), "gpt2": (3, 11, 100)}


def _input(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "vit":
        return torch.randn(3, 3, 16, 16, generator=g)
    return torch.randint(0, 100, (3, 11), generator=g)  # not the tracer's (2, 8) example


def _same(a, b) -> bool:
    la, lb = tree_leaves(a), tree_leaves(b)
    return len(la) == len(lb) and all(torch.equal(x, y) for x, y in zip(la, lb))


@pytest.fixture(scope="module", params=list(TINY))
def built(request):
    torch.manual_seed(0)
    return request.param, hf_model(request.param, **TINY[request.param])


def test_builds_from_a_config(built):
    kind, model = built
    assert isinstance(model, HFLogits) and not model.training
    out = model(_input(kind))
    assert tuple(tree_leaves(out)[0].shape) == SHAPES[kind]
    if kind == "bert-model":  # last hidden state and pooler output: every parameter is used
        assert tuple(out[1].shape) == (3, 32)
    # the HF keys, unprefixed; tied weights under both names
    keys = set(model.state_dict())
    assert keys == set(model.hf.state_dict()) | set(model.tied)
    x = _input(kind)
    assert _same(functional_call(model, dict(model.state_dict()), (x,), tie_weights=False),
                 model(x))


def test_save_pretrained_round_trip(built, tmp_path):
    kind, model = built
    model.hf.save_pretrained(tmp_path)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    if kind == "vit":  # transformers 5 saves ViT under its 4.x names and renames them on load
        assert "vit.encoder.layer.0.attention.attention.query.weight" in saved
        assert "vit.layers.0.attention.q_proj.weight" in model.state_dict()
    else:
        # HF's file layout: keys map 1:1 (a tied weight is saved once, under its first name)
        assert saved == set(model.state_dict()) - set(model.tied)
    loaded = load_hf(tmp_path)
    assert type(loaded.hf) is type(model.hf) and loaded.kind == kind
    x = _input(kind)
    assert _same(loaded(x), model(x))
    other = hf_model(kind, **TINY[kind])
    other.load_state_dict(loaded.state_dict())
    assert _same(other(x), model(x))


def test_gpt2_tied_weights_stay_tied():
    model = hf_model("gpt2", **TINY["gpt2"])
    assert model.tied == {"lm_head.weight": "transformer.wte.weight"}
    params = {k: v + 1 for k, v in model.state_dict().items()}
    x = _input("gpt2")
    model.load_state_dict(params)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(functional_call(model, params, (x,), tie_weights=False), model(x))


def test_load_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        load_hf(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        load_hf(tmp_path / "f.txt")
    with pytest.raises(UsageError, match="has no config.json"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UsageError, match="unknown model_type 'llama'"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(UsageError, match="architecture 'BertForMaskedLM' is not supported"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UsageError, match="no model.safetensors"):
        load_hf(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 never read")
    with pytest.raises(UsageError, match=r"pytorch_model.bin .*never loads; convert it to safetensors"):
        load_hf(tmp_path)


def test_missing_transformers_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UsageError, match=r"^Hugging Face models need the transformers package: "
                                         r"pip install 'modeconn\[hf\]'$"):
        hf_model("vit", **TINY["vit"])


def test_bad_kind_and_attention():
    with pytest.raises(UsageError, match="unknown Hugging Face model kind 't5'"):
        hf_model("t5")
    with pytest.raises(UsageError, match="attn_implementation must be one of"):
        hf_model("vit", attn_implementation="flash_attention_2", **TINY["vit"])


def test_traced_graph_computes_the_model(built):
    kind, model = built
    gm = trace_module(model)
    assert isinstance(gm, fx.GraphModule)
    x = _input(kind)
    ShapeProp(gm).propagate(x)
    assert _same(gm(x), model(x))
    keys = set(model.state_dict()) | set(model.tied)
    modules = dict(model.named_modules())
    for node in gm.graph.nodes:  # node targets are the HF state_dict prefixes
        if node.op == "call_module":
            own = {f"{node.target}.{k}" for k in modules[node.target].state_dict()}
            assert own <= keys, node.target
        if node.op == "get_attr":  # BERT's position_ids: a buffer state_dict leaves out
            assert node.target in dict(model.named_buffers()) | dict(model.named_parameters())
    assert read(model, x).producers


def test_eager_attention_traces_too():
    model = hf_model("gpt2", attn_implementation="eager", **TINY["gpt2"])
    gm = trace_module(model)
    x = _input("gpt2")
    assert torch.equal(gm(x), model(x))
    assert torch.matmul in {n.target for n in gm.graph.nodes}


def test_a_bare_transformers_model_asks_for_the_wrapper():
    model = hf_model("vit", **TINY["vit"])
    with pytest.raises(UsageError, match=r"cannot trace ViTForImageClassification: .*HFLogits"):
        trace_module(model.hf)


def test_the_spec_covers_stream_heads_and_mlp_and_a_permutation_is_recovered(built):
    """auto_spec derives the residual stream, each layer's heads (QK and VO members) and MLP;
    activation matching finds a random permutation of the spec's group back exactly."""
    import copy

    from modeconn.align import Permutation, activation_matching, auto_spec

    kind, model = built
    model.eval()
    spec = auto_spec(model, _input(kind)[:2])  # checked: permuting keeps the outputs
    assert len(set(spec.heads.values())) == 2 and len(spec.heads) == 4  # 2 layers, QK + VO
    stream = max(spec.sizes, key=lambda p: len(spec.perm_to_axes[p]))
    if kind != "bert-model":  # BertModel returns the stream itself: its order is the output's
        assert spec.sizes[stream] == 32 and len(spec.perm_to_axes[stream]) > 20
    assert sum(n == 64 or n == 128 for n in spec.sizes.values()) == 2  # each layer's MLP
    perm = Permutation.random(spec, torch.Generator().manual_seed(5))
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(perm.apply(model.state_dict()))
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(64, 3, 16, 16, generator=g) if kind == "vit"
         else torch.randint(0, 100, (64, 11), generator=g))
    assert activation_matching(model, permuted, x) == perm.inverse()
