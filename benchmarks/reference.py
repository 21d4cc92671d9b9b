"""The reference research repositories' data path and the machine's matmul peak, shared by the
benchmarks: a per-sample Dataset that turns each uint8 image into a PIL image, then a float tensor
(as torchvision's ToTensor), then normalises it, batched by a DataLoader."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.optim.swa_utils import update_bn
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
                     shuffle: bool = False, stats: tuple[float, float] | None = None) -> DataLoader:
    """A DataLoader over the PIL path with the dataset's global normalisation (mean and std of
    `images`, or `stats`)."""
    f = images.astype(np.float32) / 255
    mean, std = stats or (float(f.mean()), float(f.std()))
    return DataLoader(PILImageDataset(images, labels, mean, std),
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


@dataclass
class ImageData:
    """The same seeded MNIST-shaped images as uint8 arrays (for the reference path) and as
    normalised tensors in memory (for modeconn), test normalised with the training statistics."""

    train_u8: np.ndarray
    test_u8: np.ndarray
    train_y: torch.Tensor
    test_y: torch.Tensor
    train_x: torch.Tensor
    test_x: torch.Tensor

    def loaders(self, n_train: int, batch_size: int = 128) -> tuple[DataLoader, DataLoader]:
        """Reference loaders over the first `n_train` training images and the test images, both
        normalised with the statistics of all training images (as the tensors are)."""
        f = self.train_u8.astype(np.float32) / 255
        stats = float(f.mean()), float(f.std())
        return (reference_loader(self.train_u8[:n_train], self.train_y[:n_train].numpy(), batch_size,
                                 stats=stats),
                reference_loader(self.test_u8, self.test_y.numpy(), batch_size, stats=stats))


def synthetic_images(n_train: int, n_test: int, shape: tuple[int, int, int] = (1, 28, 28)) -> ImageData:
    """Synthetic images quantised to uint8, as they are stored on disk."""
    from modeconn.data import synthetic

    data = synthetic(n_train=n_train, n_test=n_test, shape=shape, seed=0)
    tr_u8, te_u8 = as_uint8_images(data.train_x), as_uint8_images(data.test_x)
    f = torch.from_numpy(tr_u8.astype("float32") / 255)
    test = torch.from_numpy(te_u8.astype("float32") / 255)
    test = test.unsqueeze(1) if test.ndim == 3 else test.permute(0, 3, 1, 2)
    return ImageData(tr_u8, te_u8, data.train_y, data.test_y, normalised(tr_u8),
                    ((test - f.mean()) / f.std()).contiguous())


def reference_point(model: torch.nn.Module, state: dict[str, torch.Tensor], train_loader: DataLoader,
                    test_loader: DataLoader) -> dict[str, tuple[float, float]]:
    """How the reference repositories evaluate one parameter point with BatchNorm re-estimation:
    a deep copy of the model, load_state_dict, swa_utils.update_bn over the training loader, then
    (loss, accuracy) over the training and test loaders; batches go to the model's device."""
    net = copy.deepcopy(model)
    net.load_state_dict(state)
    device = next(net.parameters()).device
    update_bn(train_loader, net, device=device)
    net.eval()
    row = {}
    with torch.no_grad():
        for split, loader in (("train", train_loader), ("test", test_loader)):
            loss = correct = n = 0
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                o = net(x)
                loss += F.cross_entropy(o, y, reduction="sum").item()
                correct += (o.argmax(1) == y).sum().item()
                n += len(y)
            row[split] = (loss / n, correct / n)
    return row


def sync() -> None:
    """Wait for queued GPU work, so that wall-clock timings include it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best fp32 matmul GFLOP/s of n×n products on this machine's `device`, now."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of `fn()` over `repeats` runs (queued GPU work included)."""
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best
