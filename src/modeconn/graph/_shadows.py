"""Traceable stand-ins for torch's attention modules, which fx cannot trace into.

``nn.MultiheadAttention`` and the ``nn.Transformer*`` layers branch on tensor properties (their
fast paths, mask dtypes), so fx keeps them whole and the channel propagation could not see their
heads. The tracer calls these functions in their place: the same computation at evaluation
(dropout is left out), written with operations the propagation follows (a fused in-projection
split in three, heads by ``view``, q·kᵀ, softmax, ·v). They are used only to read the graph; the
model still runs its own ``forward``, and ``check_spec`` compares the model's outputs before and
after permuting, so a stand-in that differed would be caught there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn


@fx.wrap
def _mask_bias(attn_mask: Tensor | None, key_padding_mask: Tensor | None, batch: int,
               heads: int, queries: int, keys: int) -> Tensor:
    """The additive mask of MultiheadAttention's masks (True or -inf: masked), shaped to
    broadcast over (batch, heads, queries, keys); run as one opaque step of the graph."""
    bias = torch.zeros(1, 1, queries, keys)
    for mask, shape in ((attn_mask, None), (key_padding_mask, (batch, 1, 1, keys))):
        if mask is None:
            continue
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(mask, float("-inf"))
        if shape is None:
            shape = (1, 1, queries, keys) if mask.dim() == 2 else (batch, heads, queries, keys)
        bias = bias.to(mask.device, mask.dtype) + mask.reshape(shape)
    return bias


def _multihead_attention(self: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                         key_padding_mask: Tensor | None = None, need_weights: bool = True,
                         attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                         is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
    if not self.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    heads = self.num_heads
    w, b = self.in_proj_weight, self.in_proj_bias
    q = F.linear(query, w, b).chunk(3, dim=-1)[0]
    k = F.linear(key, w, b).chunk(3, dim=-1)[1]
    v = F.linear(value, w, b).chunk(3, dim=-1)[2]
    n, lq, e = query.shape
    ls = key.shape[1]
    q, k, v = (t.reshape(n, t.shape[1], heads, e // heads).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) * (e // heads) ** -0.5
    if attn_mask is not None or key_padding_mask is not None:
        scores = scores + _mask_bias(attn_mask, key_padding_mask, n, heads, lq, ls)
    weights = scores.softmax(dim=-1)
    out = self.out_proj((weights @ v).transpose(1, 2).reshape(n, lq, e))
    if not self.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.mean(dim=1) if average_attn_weights else weights


def _encoder_layer(self: nn.TransformerEncoderLayer, src: Tensor, src_mask: Tensor | None = None,
                   src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    x = src
    if self.norm_first:
        x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
        return x + self._ff_block(self.norm2(x))
    x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
    return self.norm2(x + self._ff_block(x))


def _decoder_layer(self: nn.TransformerDecoderLayer, tgt: Tensor, memory: Tensor,
                   tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None,
                   tgt_key_padding_mask: Tensor | None = None,
                   memory_key_padding_mask: Tensor | None = None, tgt_is_causal: bool = False,
                   memory_is_causal: bool = False) -> Tensor:
    x = tgt
    if self.norm_first:
        x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
        x = x + self._mha_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask,
                                memory_is_causal)
        return x + self._ff_block(self.norm3(x))
    x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
    x = self.norm2(x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask,
                                       memory_is_causal))
    return self.norm3(x + self._ff_block(x))


def _encoder(self: nn.TransformerEncoder, src: Tensor, mask: Tensor | None = None,
             src_key_padding_mask: Tensor | None = None, is_causal: bool | None = None) -> Tensor:
    x = src
    for layer in self.layers:
        x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                  is_causal=bool(is_causal))
    return self.norm(x) if self.norm is not None else x


def _decoder(self: nn.TransformerDecoder, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None,
             memory_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
             memory_key_padding_mask: Tensor | None = None, tgt_is_causal: bool | None = None,
             memory_is_causal: bool = False) -> Tensor:
    x = tgt
    for layer in self.layers:
        x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                  tgt_key_padding_mask=tgt_key_padding_mask,
                  memory_key_padding_mask=memory_key_padding_mask,
                  tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
    return self.norm(x) if self.norm is not None else x


def shadow_of(module: nn.Module) -> Callable[..., Any] | None:
    """The traceable stand-in for a module's forward (None: trace it as fx would)."""
    if isinstance(module, nn.MultiheadAttention):
        # Separate q/k/v projections (kdim, vdim) and extra key/value biases keep the module
        # whole: its inputs are then pinned, and the reader says where.
        usable = module._qkv_same_embed_dim and module.bias_k is None \
            and not module.add_zero_attn
        return _multihead_attention if usable else None
    for cls, fn in ((nn.TransformerEncoderLayer, _encoder_layer),
                    (nn.TransformerDecoderLayer, _decoder_layer),
                    (nn.TransformerEncoder, _encoder), (nn.TransformerDecoder, _decoder)):
        if type(module).forward is cls.forward and isinstance(module, cls):
            return fn
    return None
