"""A Vision Transformer: patch embedding, class token, pre-norm blocks with fused-qkv attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

POOLS = ("cls", "mean")


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm/nanoGPT style)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        d = self.head_dim
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(B, N, self.heads, d).transpose(1, 2)
        k = k.view(B, N, self.heads, d).transpose(1, 2)
        v = v.view(B, N, self.heads, d).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class MLPBlock(nn.Sequential):
    """Linear → GELU → Linear."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLPBlock(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Vision Transformer for C×H×W inputs: non-overlapping patch×patch patches embedded to
    `width`, a learned class token and positional embedding, `depth` blocks, a final LayerNorm
    and a linear head on the class token (pool="cls") or the mean of the tokens (pool="mean")."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 128,
                 depth: int = 4, heads: int = 4, patch: int = 7, mlp_ratio: float = 2.0,
                 pool: str = "cls"):
        super().__init__()
        c, h, w = input_shape
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        width, depth, heads, patch = int(width), int(depth), int(heads), int(patch)
        self.pool = pool
        self.patch_embed = nn.Conv2d(c, width, patch, stride=patch)
        tokens = (h // patch) * (w // patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, tokens + 1, width))
        hidden = max(1, round(width * mlp_ratio))
        self.blocks = nn.Sequential(*(Block(width, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        B = x.shape[0]
        x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(dim=1))
