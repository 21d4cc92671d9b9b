"""A small GPT-style decoder-only language model, attention written out by hand.

Options cover the variants alignment has to handle: GELU or SwiGLU MLPs, LayerNorm or RMSNorm,
learned positions or rotary embeddings (RoPE), grouped-query attention (fewer key/value heads),
and an output layer tied to the token embedding or not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MLPS = ("gelu", "swiglu")
NORMS = ("layer", "rms")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _norm(kind: str, width: int) -> nn.Module:
    return nn.LayerNorm(width) if kind == "layer" else nn.RMSNorm(width)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v projections; k and v may have
    fewer heads (`kv_heads`), each shared by heads // kv_heads query heads."""

    def __init__(self, width: int, heads: int, kv_heads: int, context: int, rotary: bool):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.o = nn.Linear(width, width, bias=False)
        self.register_buffer("mask", torch.ones(context, context, dtype=torch.bool).tril(),
                             persistent=False)
        self.rotary = rotary
        if rotary:
            inv_freq = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
            angles = torch.outer(torch.arange(context).float(), inv_freq)
            angles = torch.cat([angles, angles], dim=-1)  # (context, head_dim)
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q = self.q(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.rotary:
            # narrow(…, T), not [:T]: fx cannot slice a buffer (a plain tensor) by a traced size.
            cos, sin = self.cos.narrow(0, 0, T), self.sin.narrow(0, 0, T)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        mask = self.mask.narrow(0, 0, T).narrow(1, 0, T)  # mask[:T, :T], traceable
        scores = scores.masked_fill(~mask, float("-inf"))
        y = scores.softmax(dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class GeluMLP(nn.Module):
    """Linear → GELU → Linear."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), without biases (as in LLaMA)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, width: int, heads: int, kv_heads: int, context: int, mlp: str,
                 norm: str, rotary: bool):
        super().__init__()
        self.norm1 = _norm(norm, width)
        self.attn = CausalSelfAttention(width, heads, kv_heads, context, rotary)
        self.norm2 = _norm(norm, width)
        # SwiGLU's hidden size keeps its parameter count near GELU's 4×width MLP (LLaMA's 8/3).
        self.mlp = GeluMLP(width, 4 * width) if mlp == "gelu" else SwiGLU(width, 8 * width // 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Decoder-only language model: token ids (B, T) with T ≤ context → logits (B, T, vocab)."""

    def __init__(self, vocab_size: int, context: int = 64, width: int = 128, depth: int = 4,
                 heads: int = 4, mlp: str = "gelu", norm: str = "layer", rotary: bool = False,
                 tied: bool = True, kv_heads: int | None = None):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        problems = [
            (min(vocab_size, context, width, depth, heads, kv_heads) < 1,
             "vocab_size, context, width, depth, heads and kv_heads must be positive"),
            (width % max(heads, 1) != 0, f"width {width} must be divisible by heads {heads}"),
            (heads % max(kv_heads, 1) != 0, f"heads {heads} must be divisible by kv_heads {kv_heads}"),
            (rotary and (width // max(heads, 1)) % 2 != 0,
             f"rotary embeddings need an even head size, got width/heads = {width // max(heads, 1)}"),
            (mlp not in MLPS, f"mlp must be one of {', '.join(MLPS)}, got {mlp!r}"),
            (norm not in NORMS, f"norm must be one of {', '.join(NORMS)}, got {norm!r}"),
        ]
        for bad, message in problems:
            if bad:
                raise ValueError(message)
        self.context, self.rotary, self.tied = context, rotary, tied
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = None if rotary else nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads, kv_heads, context, mlp, norm, rotary)
                                      for _ in range(depth)))
        self.norm = _norm(norm, width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.apply(self._init)
        if tied:
            self.lm_head.weight = self.tok.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        x = self.tok(idx)
        if self.pos is not None:
            x = x + self.pos(torch.arange(T, device=idx.device))
        x = self.norm(self.blocks(x))
        return self.lm_head(x)
