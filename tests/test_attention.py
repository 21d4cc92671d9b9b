"""Attention heads and concatenations: the specs the graph reader derives, and exact recovery.

Every model here is permuted by a random element of its derived spec's group; activation
matching (one assignment per group, two levels for heads) must find the permutation back
exactly, and weight matching must too where its coordinate descent reaches the optimum.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeconn.align import (
    Permutation,
    PermutationSpec,
    activation_matching,
    auto_spec,
    check_spec,
    weight_matching,
)
from modeconn.errors import UsageError

# --- models -------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention written by hand, in the ways public code writes it."""

    def __init__(self, width: int, heads: int, style: str):
        super().__init__()
        self.heads, self.style = heads, style
        if style.startswith(("fused", "timm")):
            self.qkv = nn.Linear(width, 3 * width)
        else:
            self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.o = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        if self.style == "fused-chunk":
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        elif self.style == "fused-split":
            q, k, v = self.qkv(x).split(c, dim=2)
        elif self.style.startswith("timm"):  # timm's Attention: (3, B, heads, N, head_dim)
            qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0) if self.style == "timm-unbind" else (qkv[0], qkv[1], qkv[2])
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        if not self.style.startswith("timm"):
            q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                       for z in (q, k, v))
        if self.style == "einsum":
            s = torch.einsum("bhqd,bhkd->bhqk", q, k) * (c // self.heads) ** -0.5
            y = torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v)
        elif self.style == "matmul":
            s = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
            y = s.softmax(dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, c))


class Encoder(nn.Module):
    """Pre-norm transformer blocks over a sequence of 5-d tokens, mean-pooled to 3 classes."""

    def __init__(self, style: str, width: int = 16, heads: int = 4, depth: int = 2):
        super().__init__()
        self.inp = nn.Linear(5, width)
        self.pos = nn.Parameter(torch.randn(1, 6, width) * 0.1)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(nn.ModuleDict({
                "ln1": nn.LayerNorm(width), "attn": Attention(width, heads, style),
                "ln2": nn.LayerNorm(width), "fc1": nn.Linear(width, 2 * width),
                "fc2": nn.Linear(2 * width, width)}))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x) + self.pos
        for blk in self.blocks:
            x = x + blk["attn"](blk["ln1"](x))
            x = x + blk["fc2"](F.gelu(blk["fc1"](blk["ln2"](x))))
        return self.head(self.ln(x).mean(1))


class TorchEncoder(nn.Module):
    """torch's own nn.TransformerEncoder (post- or pre-norm, with or without a causal mask)."""

    def __init__(self, norm_first: bool, batch_first: bool = True, causal: bool = False):
        super().__init__()
        self.inp = nn.Linear(5, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=batch_first,
                                           norm_first=norm_first, activation="gelu")
        self.enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16),
                                         enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)
        self.batch_first, self.causal = batch_first, causal
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(6),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = self.enc(h, mask=self.mask) if self.causal else self.enc(h)
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.head(h.mean(1))


class TorchMHA(nn.Module):
    """nn.MultiheadAttention called with its weights returned (averaged over heads)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, w = self.attn(h, h, h)
        return self.head((h + a).mean(1)) + w.sum()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class TinyGPT(nn.Module):
    """A decoder with tied embeddings, RMSNorm, a SwiGLU MLP and (optionally) rotary q/k."""

    def __init__(self, rotary: bool, vocab: int = 11, width: int = 16, heads: int = 4):
        super().__init__()
        self.heads, self.rotary = heads, rotary
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(8, width)
        self.norm1, self.norm2, self.norm = (nn.RMSNorm(width) for _ in range(3))
        self.q, self.k, self.v, self.o = (nn.Linear(width, width, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(width, 24, bias=False), nn.Linear(width, 24, bias=False)
        self.down = nn.Linear(24, width, bias=False)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.tok.weight
        d = width // heads
        freq = 1.0 / 10000 ** (torch.arange(0, d, 2) / d)
        angles = torch.outer(torch.arange(8.0), freq)
        self.register_buffer("cos", torch.cat([angles.cos()] * 2, -1), persistent=False)
        self.register_buffer("sin", torch.cat([angles.sin()] * 2, -1), persistent=False)
        self.register_buffer("causal", torch.ones(8, 8, dtype=torch.bool).tril(), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        h = self.norm1(x)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2)
                   for z in (self.q(h), self.k(h), self.v(h)))
        if self.rotary:
            cos, sin = self.cos[:t], self.sin[:t]
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        s = s.masked_fill(~self.causal[:t, :t], float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.o(y)
        h = self.norm2(x)
        x = x + self.down(F.silu(self.gate(h)) * self.up(h))
        return self.lm_head(self.norm(x))


class GroupedQuery(nn.Module):
    """Grouped-query attention as Llama writes it (keys and values repeated by expand + reshape)
    or through scaled_dot_product_attention's enable_gqa: 8 query heads share 2 key/value heads."""

    def __init__(self, style: str, width: int = 32, heads: int = 8, kv: int = 2):
        super().__init__()
        self.style, self.h, self.kv, self.d = style, heads, kv, width // heads
        self.emb = nn.Embedding(11, width)
        self.q, self.o = nn.Linear(width, width, bias=False), nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, kv * self.d, bias=False)
        self.v = nn.Linear(width, kv * self.d, bias=False)
        self.norm = nn.RMSNorm(width)
        self.head = nn.Linear(width, 11, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        b, t, c = x.shape
        h = self.norm(x)
        q = self.q(h).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k(h).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v(h).view(b, t, self.kv, self.d).transpose(1, 2)
        if self.style == "expand":
            g = self.h // self.kv
            k = k[:, :, None].expand(b, self.kv, g, t, self.d).reshape(b, self.h, t, self.d)
            v = v[:, :, None].expand(b, self.kv, g, t, self.d).reshape(b, self.h, t, self.d)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.head(x + self.o(y.transpose(1, 2).reshape(b, t, c)))


class Branches(nn.Module):
    """Inception/DenseNet-like: branches of different widths concatenated with their input,
    a flattened map concatenated with unpermuted features."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 6, 3, padding=1)
        self.mix = nn.Conv2d(18, 10, 1)
        self.fc = nn.Linear(10 * 4 * 4 + 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.stem(x))
        y = torch.cat([s, F.relu(self.b1(s)), F.relu(self.b2(s))], dim=1)
        z = F.adaptive_avg_pool2d(F.relu(self.mix(y)), 4).flatten(1)
        return self.fc(torch.cat([z, x.mean((2, 3))], dim=1))


def _case(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    seq = torch.randn(96, 6, 5)
    if name.startswith("hand-"):
        return Encoder(name.removeprefix("hand-")), seq
    if name == "torch-mha":
        return TorchMHA(), seq
    if name.startswith("torch-encoder"):
        return TorchEncoder(norm_first="pre" in name, batch_first="seq" not in name,
                            causal="causal" in name), seq
    if name.startswith("gpt"):
        return TinyGPT(rotary="rotary" in name), torch.randint(0, 11, (96, 8))
    if name.startswith("gqa"):
        return GroupedQuery(name.removeprefix("gqa-")), torch.randint(0, 11, (96, 8))
    if name.startswith("zoo-gpt"):
        from modeconn.models import GPT

        options = {"zoo-gpt-gqa": dict(kv_heads=2), "zoo-gpt-mqa": dict(kv_heads=1),
                   "zoo-gpt-gqa-rotary-swiglu": dict(
            kv_heads=2, rotary=True, mlp="swiglu", norm="rms")}[name]
        return GPT(11, context=8, width=32, depth=2, heads=4, **options), \
            torch.randint(0, 11, (96, 8))
    return Branches(), torch.randn(96, 3, 8, 8)


CASES = ["hand-fused-chunk", "hand-fused-split", "hand-timm-unbind", "hand-timm-index",
         "hand-separate", "hand-matmul", "hand-einsum",
         "torch-mha", "torch-encoder-pre", "torch-encoder-post", "torch-encoder-seq-causal",
         "gpt", "gpt-rotary", "gqa-expand", "gqa-sdpa", "zoo-gpt-gqa", "zoo-gpt-mqa",
         "zoo-gpt-gqa-rotary-swiglu", "branches"]


# --- specs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_a_random_permutation_is_recovered_exactly(name):
    model, x = _case(name)
    model.eval()
    spec = auto_spec(model, x[:4])  # checked inside: the outputs do not change
    perm = Permutation.random(spec, torch.Generator().manual_seed(1))
    assert not perm.is_identity()
    state = model.state_dict()
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(perm.apply(state))
    assert activation_matching(model, permuted, x) == perm.inverse()
    found = weight_matching(state, permuted.state_dict(), spec=spec, seed=1)
    back = found.apply(permuted.state_dict())
    for k, v in state.items():
        assert torch.equal(back[k], v), k


@pytest.mark.parametrize("name", ["hand-fused-chunk", "hand-separate", "torch-mha",
                                  "torch-encoder-pre"])
def test_heads_form_one_group_with_a_member_for_qk_and_one_for_vo(name):
    model, x = _case(name)
    spec = auto_spec(model, x[:4])
    heads = sorted(set(spec.heads.values()))
    assert len(heads) == (1 if name == "torch-mha" else 2)  # one head group per layer
    for h in heads:
        assert spec.sizes[h] == 4 and len(spec.members(h)) == 2  # QK and VO
        for m in spec.members(h):
            assert spec.sizes[m] == 16
    # Q and K share one member, V and O's columns the other; the residual stream is one group
    if name == "hand-separate":
        assert spec.axes["blocks.0.attn.q.weight"][0] == spec.axes["blocks.0.attn.k.weight"][0]
        assert spec.axes["blocks.0.attn.v.weight"][0] == spec.axes["blocks.0.attn.o.weight"][1]
        stream = spec.axes["inp.weight"][0]
        for key in ("pos", "blocks.0.ln1.weight", "blocks.1.ln2.bias", "ln.weight",
                    "blocks.1.fc2.weight", "blocks.0.attn.o.bias"):
            assert stream in spec.axes[key], key
        assert spec.axes["head.weight"] == (None, stream)


def test_a_fused_projection_is_indexed_by_segments():
    model, x = _case("hand-fused-chunk")
    spec = auto_spec(model, x[:4])
    slots = spec.segments[("blocks.0.attn.qkv.weight", 0)]
    assert [s.start for s in slots] == [0, 16, 32]
    qk, vo = spec.heads and (slots[0].perm, slots[2].perm)
    assert slots[1].perm == qk != vo  # Q and K rows move together, V rows with O's columns
    assert spec.axes["blocks.0.attn.o.weight"][1] == vo


def test_rotary_embeddings_leave_only_whole_heads_to_move():
    plain = auto_spec(*(lambda m, x: (m, x[:4]))(*_case("gpt")))
    rotary = auto_spec(*(lambda m, x: (m, x[:4]))(*_case("gpt-rotary")))
    assert len(plain.heads) == 2
    # with RoPE, q and k rows may not move within a head (each position's angle is fixed):
    # they move as whole head blocks of the head permutation
    assert len(rotary.heads) == 1
    (vo, head), = rotary.heads.items()
    assert rotary.axes["q.weight"][0] == head and rotary.layout("q.weight", 0) == (1, 4)
    assert rotary.axes["k.weight"][0] == head
    assert rotary.axes["v.weight"][0] == vo


def test_gated_mlp_and_tied_embeddings_share_their_groups():
    model, x = _case("gpt")
    spec = auto_spec(model, x[:4])
    assert spec.axes["gate.weight"][0] == spec.axes["up.weight"][0] == spec.axes["down.weight"][1]
    stream = spec.axes["tok.weight"][1]
    assert spec.axes["lm_head.weight"] == (None, stream)
    assert spec.axes["pos.weight"][1] == stream and spec.axes["norm.weight"] == (stream,)


def test_concatenated_branches_of_different_widths_index_the_consumer_by_offsets():
    model, x = _case("branches")
    spec = auto_spec(model, x[:4])
    slots = spec.segments[("mix.weight", 1)]
    assert [(s.perm, s.start) for s in slots] == [("stem", 0), ("b1", 8), ("b2", 12)]
    # a flattened map followed by unpermuted features: one slot, its entries in blocks of 16
    (fc,) = spec.segments[("fc.weight", 1)]
    assert (fc.perm, fc.start, fc.inner) == ("mix", 0, 16)


def test_specs_with_segments_and_heads_round_trip_through_json():
    model, x = _case("hand-fused-chunk")
    spec = auto_spec(model, x[:4])
    perm = Permutation.random(spec, torch.Generator().manual_seed(2))
    again = Permutation.from_json(perm.to_json())
    assert again == perm and again.spec == spec
    assert json.loads(perm.to_json())["spec"]["heads"]


def test_a_member_that_breaks_its_heads_is_refused():
    model, x = _case("hand-separate")
    spec = auto_spec(model, x[:4])
    perms = dict(Permutation.identity(spec))
    member = next(iter(spec.heads))
    perms[member] = torch.arange(16).roll(1)  # moves units across head boundaries
    with pytest.raises(UsageError, match="does not move whole heads"):
        Permutation(spec, perms)


def test_check_spec_refuses_heads_treated_as_free_units():
    model, x = _case("hand-separate")
    spec = auto_spec(model, x[:4])
    free = PermutationSpec(spec.axes, spec.sizes, spec.layouts)  # heads structure dropped
    with pytest.raises(UsageError, match="does not fit Encoder.*blocks.0.attn.q"):
        check_spec(model, free, x[:4])


def test_a_spec_segment_out_of_range_is_refused():
    state = {"w": torch.zeros(5, 3)}
    spec = PermutationSpec({}, {"p": 4}, segments={("w", 0): [("p", 2, 1, 1)]})
    with pytest.raises(UsageError, match="entries 2..5 of 'w' axis 0"):
        spec.validate(state)


def test_ot_fusion_keeps_heads_whole():
    """OT fusion of an attention model with a permuted copy of itself: one exact plan per head
    group (two-level assignment on the ground costs) carries A onto B; a plan that could mix
    units across heads (Sinkhorn, importance marginals) is refused in one line."""
    from modeconn.merge.ot import ot_fusion

    # The activation cost: with the weights cost, a residual stream's incoming weights include
    # those of layers whose other axis is a later group, not yet carried (OT's residual cycle),
    # so even a permuted copy is not carried back exactly there.
    for name in ("hand-separate", "hand-fused-chunk", "gqa-sdpa", "gpt-rotary"):
        model, x = _case(name)
        model.eval()
        spec = auto_spec(model, x[:4])
        perm = Permutation.random(spec, torch.Generator().manual_seed(3))
        a = model.state_dict()
        b = perm.apply(a)
        fused = ot_fusion(model, a, model, b, x[:4], cost="activations", x=x)
        for k in a:
            torch.testing.assert_close(fused.aligned[k], b[k], rtol=0, atol=1e-6,
                                       msg=f"{name} {k}")
        assert set(fused.plans) == set(spec.sizes)
    with pytest.raises(UsageError, match=r"OT fusion keeps attention heads .* whole only with "
                                         r"exact plans.*--solver emd --marginals uniform"):
        ot_fusion(model, a, model, b, x[:4], solver="sinkhorn")


# --- nothing is left unaligned silently --------------------------------------------------------


class Offset(nn.Module):
    """An MLP whose first hidden layer adds an unsaved buffer: its units cannot be permuted
    (the buffer is not in the state dict, so it cannot move with them)."""

    def __init__(self, input_shape=(4,), num_classes=3):
        super().__init__()
        d = 1
        for s in input_shape:
            d *= s
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, 8), nn.Linear(8, 6), nn.Linear(6, num_classes)
        self.register_buffer("offset", torch.linspace(-1, 1, 8), persistent=False)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x) + self.offset))))


def test_a_layer_the_spec_cannot_cover_is_named_in_one_line():
    model, x = Offset(), torch.randn(4, 4)
    with pytest.raises(UsageError) as err:
        auto_spec(model, x)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("auto_spec cannot align all of Offset: 'fc1' (fc1.weight[0], fc1.bias[0], "
                 "fc2.weight[1]) meets a tensor that is not in the state dict",
                 "at operator.add in Offset.forward", "allow_partial=True (--allow-partial)"):
        assert part in msg
    spec = auto_spec(model, x, allow_partial=True)  # the rest, checked
    assert spec.sizes == {"fc2": 6}
    with pytest.raises(UsageError, match="cannot align all of Offset"):
        activation_matching(model, copy.deepcopy(model), x)  # no spec given: traced, refused
    perm = activation_matching(model, copy.deepcopy(model), torch.randn(64, 4), spec=spec)
    assert perm.is_identity()


def test_the_model_output_and_grouped_layers_are_not_reported():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.gconv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.gn = nn.GroupNorm(2, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            y = F.relu(self.gn(self.gconv(F.relu(self.conv1(x)))))
            return self.fc(y.mean((2, 3))), y  # a feature map is returned too

    spec = auto_spec(Grouped(), torch.randn(2, 3, 8, 8))  # nothing to refuse
    assert spec.sizes == {}


def test_align_allow_partial_from_the_cli(cli, tmp_path, monkeypatch):
    from modeconn import models

    for name in ("ARCHS", "PRESETS", "NOTES"):
        monkeypatch.setattr(models, name, dict(getattr(models, name)))
    models.register("offset", Offset)
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        assert cli("train", "--model", "offset", "--epochs", "1", "--init-seed", seed, "--quiet",
                   "--device", "cpu", "--out", out)[0] == 0
        runs.append(out / "all" / "model.safetensors")
    rc, _, err = cli("align", *runs, "--out", tmp_path / "a", "--quiet")
    assert rc == 2 and err.count("\n") == 1
    assert "cannot align all of Offset: 'fc1'" in err and "--allow-partial" in err
    assert not (tmp_path / "a").exists()  # refused before anything is written
    rc, out, _ = cli("align", *runs, "--out", tmp_path / "b", "--allow-partial", "--quiet")
    assert rc == 0 and (tmp_path / "b" / "permutation.json").exists()
    saved = json.loads((tmp_path / "b" / "permutation.json").read_text())
    assert set(saved["permutation"]) == {"fc2"}


def test_grouped_query_heads_move_with_their_key_value_head():
    model, x = _case("gqa-expand")
    spec = auto_spec(model, x[:4])
    # the query rows are the key rows' permutation, each key head's block repeated 4 times
    (q,) = spec.segments[("q.weight", 0)]
    assert (q.perm, q.repeat, q.block) == (spec.axes["k.weight"][0], 4, 4)
    (o,) = spec.segments[("o.weight", 1)]
    assert (o.perm, o.repeat, o.block) == (spec.axes["v.weight"][0], 4, 4)
    assert spec.sizes[spec.heads[q.perm]] == 2
    perm = Permutation.random(spec, torch.Generator().manual_seed(4))
    assert Permutation.from_json(perm.to_json()) == perm


def test_ot_fusion_follows_concatenations():
    """OT fusion of a model with a permuted copy of itself, through concatenated branches of
    different widths and a flattened map: the exact plan carries A onto B, unit for unit."""
    from modeconn.merge.ot import ot_fusion

    model, x = _case("branches")
    spec = auto_spec(model, x[:4])
    perm = Permutation.random(spec, torch.Generator().manual_seed(3))
    a = model.state_dict()
    b = perm.apply(a)
    for cost in ("weights", "activations"):
        fused = ot_fusion(model, a, model, b, x[:4], cost=cost, x=x)
        for k in a:
            torch.testing.assert_close(fused.aligned[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_the_hessian_trace_goes_through_scaled_dot_product_attention():
    """Double backprop through F.scaled_dot_product_attention (whose fused CPU kernel has no
    second derivative) works: the Hutchinson trace runs the math kernel."""
    from modeconn.paths.landscape import hessian_trace

    model, x = _case("hand-fused-chunk")
    y = torch.randint(0, 3, (len(x),))
    out = hessian_trace(model, model.state_dict(), x, y, probes=2, batch_size=48)
    assert out["samples"] == 4 and torch.isfinite(torch.tensor(out["trace"]))


def test_ot_fusion_refuses_a_partial_spec_unless_allowed():
    from modeconn.merge.ot import ot_fusion

    model, x = Offset(), torch.randn(32, 4)
    a = model.state_dict()
    with pytest.raises(UsageError, match="cannot align all of Offset: 'fc1'"):
        ot_fusion(model, a, model, a, x[:4])
    fused = ot_fusion(model, a, model, a, x[:4], allow_partial=True)
    assert set(fused.plans) == {"fc2"}
