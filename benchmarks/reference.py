"""The reference research repositories' data path and the machine's matmul peak, shared by the
benchmarks: a per-sample Dataset that turns each uint8 image into a PIL image, then a float tensor
(as torchvision's ToTensor), then normalises it, batched by a DataLoader."""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset


class PILImageDataset(Dataset):
    """uint8 images (N, H, W) or (N, H, W, C) served one at a time through PIL."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float):
        self.images, self.labels = images, labels
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        x = x.float().div(255)
        return (x - self.mean) / self.std, int(self.labels[i])


def reference_loader(images: np.ndarray, labels: np.ndarray, batch_size: int,
                     shuffle: bool = False) -> DataLoader:
    """A DataLoader over the PIL path with the dataset's global normalisation."""
    f = images.astype(np.float32) / 255
    return DataLoader(PILImageDataset(images, labels, float(f.mean()), float(f.std())),
                      batch_size=batch_size, shuffle=shuffle, num_workers=0)


def as_uint8_images(x: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] (N, C, H, W) as uint8 arrays in PIL's layout."""
    a = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    a = a[:, 0] if a.shape[1] == 1 else a.permute(0, 2, 3, 1)
    return a.contiguous().numpy()


def normalised(images: np.ndarray) -> torch.Tensor:
    """The same normalised float tensor the reference path produces, held in memory."""
    f = torch.from_numpy(images.astype(np.float32) / 255)
    f = f.unsqueeze(1) if f.ndim == 3 else f.permute(0, 3, 1, 2)
    mean, std = float(f.mean()), float(f.std())
    return ((f - mean) / std).contiguous()


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matmul GFLOP/s of n×n products on this machine, now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of `fn()` over `repeats` runs."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best
