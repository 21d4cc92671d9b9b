"""Data sources: what training and evaluation read batches from.

In-memory tensors are the fast path and the common case. Data larger than memory (the full
BigEarthNet: about 590,000 patches) stays in its memory-mapped cache and is read batch by batch
through `MappedImages`, which speaks the small protocol the training steps and the evaluation
engine use on their inputs — `len`, `shape`, `dim()`, `device`, `dtype`, `element_size()`,
slices `x[i:j]`, `x[idx]` and `x.index_select(0, idx)` for 1-D index tensors, `x.to(device)` and
`x.contiguous(memory_format=...)` — and returns ordinary float tensors on the source's device.

A source is a view: rows of the cache, the channels kept, and the per-channel normalisation,
applied as each batch is read (uint16 → float32, scaled, normalised). Selecting rows, channels or
a normalisation makes a new view; nothing is read until a batch is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

STAT_BLOCK = 256  # rows per block when statistics stream through a source


@dataclass(frozen=True, eq=False)
class MappedImages:
    """Rows `rows` of a memory-mapped (N, C, H, W) array `array` (uint16 or float), channels
    `channels`, read as float32 `array · scale`, then `(value − mean) / std` per kept channel.
    `scale` is one number, or one per channel of `array` (bands of different sensors)."""

    array: np.ndarray
    rows: np.ndarray
    channels: tuple[int, ...]
    scale: float | tuple[float, ...] = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    device: torch.device = torch.device("cpu")
    channels_last: bool = False

    @classmethod
    def of(cls, array: np.ndarray, rows: Sequence[int] | np.ndarray | None = None,
           scale: float | tuple[float, ...] = 1.0) -> MappedImages:
        """Every channel of `rows` (default: all rows) of `array`."""
        idx = np.arange(len(array)) if rows is None else np.asarray(rows, dtype=np.int64)
        return cls(array, idx, tuple(range(array.shape[1])), scale)

    # ---------------------------------------------------------------- the tensor protocol

    dtype = torch.float32

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), len(self.channels), *self.array.shape[2:]))

    def dim(self) -> int:
        return len(self.shape)

    def element_size(self) -> int:
        return 4

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def __getitem__(self, key) -> Tensor:
        if isinstance(key, slice):
            return self._read(self.rows[key])
        if torch.is_tensor(key) and key.dim() == 1 and not key.dtype.is_floating_point:
            return self.index_select(0, key.long() if key.dtype != torch.bool
                                     else key.nonzero().flatten())
        raise TypeError("a memory-mapped source is read by slices, 1-D integer tensors or "
                        "index_select")

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        if dim != 0:
            raise ValueError("a memory-mapped source selects samples (dim 0) only")
        return self._read(self.rows[index.cpu().numpy()])

    def to(self, device: torch.device | str) -> MappedImages:
        return replace(self, device=torch.device(device))

    def contiguous(self, memory_format: torch.memory_format = torch.contiguous_format
                   ) -> MappedImages:
        return replace(self, channels_last=memory_format == torch.channels_last)

    # ---------------------------------------------------------------- views

    def take(self, index: np.ndarray | Tensor) -> MappedImages:
        """The samples at positions `index` of this view."""
        index = index.numpy() if torch.is_tensor(index) else np.asarray(index)
        return replace(self, rows=self.rows[index])

    def select_channels(self, index: Sequence[int]) -> MappedImages:
        """The channels at positions `index` of this view, in that order."""
        if self.mean is not None:
            raise ValueError("select channels before normalising")
        return replace(self, channels=tuple(self.channels[i] for i in index))

    def normalised(self, mean: Tensor, std: Tensor) -> MappedImages:
        """This view normalised per channel."""
        return replace(self, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))

    def materialise(self) -> Tensor:
        """Every sample of the view as one in-memory tensor."""
        return self._read(self.rows)

    def stats(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and standard deviation (float64 accumulation, streamed in blocks
        of rows) of the view's values before normalisation."""
        return streamed_stats(replace(self, mean=None, std=None, device=torch.device("cpu"),
                                      channels_last=False))

    # ---------------------------------------------------------------- reading

    def _read(self, rows: np.ndarray) -> Tensor:
        rows = np.atleast_1d(rows)
        # Read in ascending order (page-cache friendly), then put the samples back in order.
        order = np.argsort(rows, kind="stable")
        block = self.array[rows[order]][:, list(self.channels)]
        x = torch.from_numpy(np.ascontiguousarray(block).astype(np.float32, copy=False))
        if len(rows) > 1 and np.any(order[1:] < order[:-1]):
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            x = x[torch.from_numpy(inverse)]
        if isinstance(self.scale, tuple):
            x = x * torch.tensor([self.scale[c] for c in self.channels]).view(1, -1, 1, 1)
        elif self.scale != 1.0:
            x = x * self.scale
        if self.mean is not None:
            m = torch.tensor(self.mean).view(1, -1, 1, 1)
            s = torch.tensor(self.std).view(1, -1, 1, 1)
            x = (x - m) / s
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.device)


def take(x: Tensor | MappedImages, index: np.ndarray) -> Tensor | MappedImages:
    """The samples of `x` at `index` (a view for a mapped source)."""
    if torch.is_tensor(x):
        return x[torch.from_numpy(np.asarray(index))]
    return x.take(index)


def streamed_stats(x: Tensor | MappedImages) -> tuple[Tensor, Tensor]:
    """Per-channel mean and sample standard deviation (at least 1e-6) of images (N, C, H, W),
    accumulated in float64 over blocks of `STAT_BLOCK` rows: the same numbers for the same
    values whether they are in memory or read from a memory-mapped cache."""
    c = x.shape[1]
    s1, s2, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for i in range(0, len(x), STAT_BLOCK):
        b = x[i:i + STAT_BLOCK].double()
        s1 += b.sum((0, 2, 3))
        s2 += (b * b).sum((0, 2, 3))
        n += b.numel() // c
    mean = s1 / max(n, 1)
    var = (s2 - n * mean**2) / max(n - 1, 1)
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-6)


def channel_stats(x: Tensor | MappedImages, streamed: bool = False) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation (at least 1e-6) of images (N, C, H, W): over the
    whole tensor at once, or `streamed_stats` (always for a mapped source; for a tensor with
    `streamed`, so that data which may live either way is normalised alike)."""
    if not torch.is_tensor(x):
        return x.stats()
    if streamed:
        return streamed_stats(x)
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6)


def normalise(x: Tensor | MappedImages, mean: Tensor, std: Tensor) -> Tensor | MappedImages:
    """Images normalised per channel (a view for a mapped source)."""
    if not torch.is_tensor(x):
        return x.normalised(mean, std)
    return ((x - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()


def as_tensor(x: Tensor | MappedImages) -> Tensor:
    """`x` in memory (a mapped source read in full)."""
    return x if torch.is_tensor(x) else x.materialise()
