"""Controlled training subsets (ALGORITHMS.md §3): iid, label skew, Dirichlet, domain shift.

A shift is written as a string, e.g. ``iid:50,50``, ``iid:20,80``, ``label-skew:0-4=80,5-9=20``,
``dirichlet:0.5``, ``domain:none|rotate=30+noise=0.1`` or, for multispectral data, the band shift
``bands:B02|B03,B04,B08`` (equal disjoint halves, each seen through its own bands: the domain
``bands=B02|bands=B03/B04/B08``), and the sensor shift of BigEarthNet v2 ``sensors:S2|S1``: one
half seen through Sentinel-2 bands, the other through Sentinel-1 backscatter, each sensor's bands
fed to the same input channels one to one (default S2 = B04,B08, red and near-infrared; S1 =
VV,VH; ``sensors:S2=B02,B03|S1=VV,VH`` chooses), so that the models share one input shape and
interpolate. Subsets are disjoint and reproducible from the split seed.

Multi-label data (multi-hot labels) is split by each sample's *dominant label* (`strata`): its
rarest label in the training set, the most specific one it carries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .bigearthnet import SENSORS

SHIFT_KINDS = ("iid", "label-skew", "dirichlet", "domain", "bands", "sensors")
BAND_SHIFTS = ("bands", "sensors")  # the shifts that choose each subset's input channels
# A sensor shift's channels when its text names the sensor alone: Sentinel-2's red and
# near-infrared (the NDVI pair, 10 m) against Sentinel-1's two polarisations.
SENSOR_DEFAULT_BANDS = {"S2": ("B04", "B08"), "S1": ("VV", "VH")}
TRANSFORMS = ("none", "rotate", "noise", "blur", "keep", "gray", "bands")


@dataclass(frozen=True)
class Shift:
    """A parsed shift: the kind, how each class is shared among subsets, and per-subset domains."""

    kind: str
    num_subsets: int
    shares: tuple[float, ...] = ()  # iid/domain: fraction of each class per subset
    class_shares: dict[int, tuple[float, ...]] = field(default_factory=dict)  # label-skew
    alpha: float = 0.0  # dirichlet
    domains: tuple[str, ...] = ()  # domain: transform spec per subset
    text: str = ""

    def __hash__(self) -> int:
        return hash(self.text)


def subset_name(i: int) -> str:
    """Subset names: a, b, c, ..."""
    return chr(ord("a") + i) if i < 26 else f"s{i}"


def parse_shift(text: str, num_classes: int, num_subsets: int | None = None) -> Shift:
    """Parse a shift string for a dataset with `num_classes` classes."""
    if num_subsets is not None and num_subsets < 2:
        raise UsageError(f"the number of subsets must be at least 2 (a shift needs 2 subsets "
                         f"or more), got {num_subsets}")
    shift = _parse_shift(text, num_classes, num_subsets)
    if num_subsets is not None and shift.num_subsets != num_subsets:
        raise UsageError(f"{num_subsets} subsets asked for, but shift {text!r} makes "
                         f"{shift.num_subsets}; leave the number of subsets out or make them agree")
    return shift


def _parse_shift(text: str, num_classes: int, num_subsets: int | None) -> Shift:
    kind, _, arg = text.partition(":")
    if kind == "iid":
        k = num_subsets or 2
        shares = _percent_list(arg, text) if arg else tuple(1.0 / k for _ in range(k))
        return Shift("iid", len(shares), shares=shares, text=text)
    if kind == "label-skew":
        return _parse_label_skew(arg, num_classes, text)
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            raise UsageError(f"shift {text!r}: write dirichlet:ALPHA with ALPHA > 0, "
                             "e.g. dirichlet:0.5") from None
        if not alpha > 0 or not math.isfinite(alpha):
            raise UsageError(f"shift {text!r}: ALPHA must be a positive number, e.g. dirichlet:0.5")
        return Shift("dirichlet", num_subsets or 2, alpha=alpha, text=text)
    if kind == "domain":
        domains = tuple(d.strip() for d in (arg or "none|rotate=45").split("|"))
        for d in domains:
            parse_transform(d)
        n = len(domains)
        if n < 2:
            raise UsageError(f"shift {text!r}: give a transform per subset separated by '|', "
                             "e.g. domain:none|rotate=30")
        return Shift("domain", n, shares=tuple(1.0 / n for _ in range(n)), domains=domains,
                     text=text)
    if kind == "bands":
        sets = band_sets(arg, text)
        if len(sets) < 2:
            raise UsageError(f"shift {text!r}: give a band set per subset separated by '|', "
                             "e.g. bands:B02|B03,B04,B08")
        n = len(sets)
        return Shift("bands", n, shares=tuple(1.0 / n for _ in range(n)),
                     domains=tuple("bands=" + "/".join(b) for b in sets), text=text)
    if kind == "sensors":
        sets = sensor_sets(arg or "S2|S1", text)
        n = len(sets)
        return Shift("sensors", n, shares=tuple(1.0 / n for _ in range(n)),
                     domains=tuple("bands=" + "/".join(b) for b in sets), text=text)
    raise UsageError(f"unknown shift {text!r}; use one of {', '.join(SHIFT_KINDS)} "
                     "(e.g. iid:50,50, label-skew:0-4=80,5-9=20, dirichlet:0.5, domain:none|rotate=30, "
                     "bands:B02|B03,B04,B08, sensors:S2|S1)")


def sensor_sets(arg: str, text: str) -> list[list[str]]:
    """'S2|S1' or 'S2=B04,B08|S1=VV,VH' → the bands of each subset's sensor, checked: known
    sensors, their own bands, two different sensors at least, and as many bands on every side
    (the sensors feed the same input channels)."""
    example = "e.g. sensors:S2|S1 or sensors:S2=B04,B08|S1=VV,VH"
    sets, sensors = [], []
    for part in arg.split("|"):
        sensor, eq, bands = part.partition("=")
        sensor = sensor.strip()
        if sensor not in SENSORS:
            raise UsageError(f"shift {text!r}: unknown sensor {sensor!r}; use S2 or S1 ({example})")
        chosen = band_sets(bands, text)[0] if eq else list(SENSOR_DEFAULT_BANDS[sensor])
        foreign = [b for b in chosen if b not in SENSORS[sensor]]
        if foreign:
            raise UsageError(f"shift {text!r}: {foreign[0]} is not a band of {sensor} (its bands: "
                             f"{', '.join(SENSORS[sensor])})")
        sets.append(chosen)
        sensors.append(sensor)
    if len(sets) < 2 or len(set(sensors)) < 2:
        raise UsageError(f"shift {text!r}: a sensor shift needs two different sensors, one per "
                         f"subset ({example}); for bands of one sensor use bands:B02|B03")
    if len({len(b) for b in sets}) > 1:
        raise UsageError(f"shift {text!r}: the subsets see {'/'.join(str(len(b)) for b in sets)} "
                         "bands; a sensor shift feeds each sensor's bands to the same input "
                         f"channels, so give every sensor as many ({example})")
    return sets


def band_sets(text: str, what: str) -> list[list[str]]:
    """'B02|B03,B04' → [['B02'], ['B03', 'B04']]: band sets separated by '|', bands by ','."""
    sets = [[b.strip() for b in part.split(",")] for part in text.split("|")]
    if not text or any(not b for part in sets for b in part):
        raise UsageError(f"{what!r}: write band names separated by ',' and band sets by '|', "
                         "e.g. B02|B03,B04,B08")
    for part in sets:
        if len(set(part)) != len(part):
            raise UsageError(f"{what!r}: band set {','.join(part)} names a band twice")
    return sets


def _percent_list(arg: str, text: str) -> tuple[float, ...]:
    try:
        vals = [float(v) for v in arg.split(",")]
    except ValueError:
        raise UsageError(f"shift {text!r}: shares must be percentages, e.g. iid:50,50") from None
    if len(vals) < 2:
        raise UsageError(f"shift {text!r}: give at least two subset shares, e.g. iid:50,50")
    if not all(math.isfinite(v) for v in vals):
        raise UsageError(f"shift {text!r}: shares must be finite percentages, e.g. iid:50,50")
    if any(v <= 0 for v in vals):
        raise UsageError(f"shift {text!r}: every share must be positive; drop empty subsets")
    if sum(vals) > 100 + 1e-9:
        raise UsageError(f"shift {text!r}: shares add up to {sum(vals):g}% > 100%; "
                         "make them sum to at most 100")
    return tuple(v / 100 for v in vals)


def _class_range(spec: str, num_classes: int, text: str) -> list[int]:
    out = []
    for part in spec.split("+"):
        lo, dash, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise UsageError(f"shift {text!r}: classes must be numbers or ranges like 0-4") from None
        if not 0 <= a <= b < num_classes:
            raise UsageError(f"shift {text!r}: class range {part} outside 0-{num_classes - 1}")
        out.extend(range(a, b + 1))
    return out


def _parse_label_skew(arg: str, num_classes: int, text: str) -> Shift:
    if not arg:
        half = num_classes // 2
        arg = f"0-{half - 1}=80,{half}-{num_classes - 1}=20"
    class_shares: dict[int, tuple[float, ...]] = {}
    k = None
    for group in arg.split(","):
        classes, eq, shares = group.partition("=")
        if not eq:
            raise UsageError(f"shift {text!r}: write CLASSES=SHARE per group, "
                             "e.g. label-skew:0-4=80,5-9=20")
        try:
            vals = [float(v) / 100 for v in shares.split("/")]
        except ValueError:
            raise UsageError(f"shift {text!r}: shares must be percentages like 80 or 60/20/20") from None
        if len(vals) == 1:  # two subsets: A gets the share, B the rest
            vals.append(1.0 - vals[0])
        if not all(math.isfinite(v) and v >= 0 for v in vals) or sum(vals) > 1 + 1e-9:
            raise UsageError(f"shift {text!r}: shares of group {classes} must be between 0 and "
                             "100 and add up to at most 100")
        if k is not None and len(vals) != k:
            raise UsageError(f"shift {text!r}: every group needs the same number of shares")
        k = len(vals)
        for c in _class_range(classes, num_classes, text):
            if c in class_shares:
                raise UsageError(f"shift {text!r}: class {c} appears in two groups")
            class_shares[c] = tuple(vals)
    missing = sorted(set(range(num_classes)) - set(class_shares))
    if missing:
        raise UsageError(f"shift {text!r}: classes {_ranges(missing)} have no share; "
                         "cover every class, e.g. label-skew:0-4=80,5-9=20")
    assert k is not None
    return Shift("label-skew", k, class_shares=class_shares, text=text)


def _ranges(vals: list[int]) -> str:
    return ",".join(str(v) for v in vals)


def _allot(n: int, shares: np.ndarray) -> np.ndarray:
    """Counts per subset for n items: floor of shares, remainder by largest fraction when they sum to 1."""
    raw = shares * n
    counts = np.floor(raw + 1e-9).astype(np.int64)
    if abs(shares.sum() - 1.0) < 1e-9:
        rest = n - counts.sum()
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:rest]] += 1
    return counts


def strata(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """The class each sample is split by: its label, or for multi-hot labels (N, L) its dominant
    label — the rarest of its labels in `labels` (ties: the lowest index); a sample without any
    label counts under the most frequent label."""
    y = np.asarray(labels)
    if y.ndim == 1:
        return y
    hot = y > 0.5
    freq = hot.sum(0)
    rank = np.where(hot, freq[None, :], np.iinfo(np.int64).max)
    out = rank.argmin(1)
    out[~hot.any(1)] = int(freq.argmax()) if len(freq) else 0
    return out


def split_indices(labels: torch.Tensor | np.ndarray, shift: Shift, num_classes: int,
                  seed: int) -> list[np.ndarray]:
    """Disjoint index arrays into the training set, one per subset, reproducible from `seed`
    (multi-label data split by each sample's dominant label, `strata`)."""
    y = strata(labels)
    rng = np.random.default_rng(seed)
    k = shift.num_subsets
    if shift.kind == "dirichlet":
        props = rng.dirichlet(np.full(k, shift.alpha), size=num_classes)
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        if shift.kind == "label-skew":
            shares = np.array(shift.class_shares[c])
        elif shift.kind == "dirichlet":
            shares = props[c]
        else:
            shares = np.array(shift.shares)
        counts = _allot(len(idx), shares)
        start = 0
        for i, n in enumerate(counts):
            parts[i].append(idx[start:start + n])
            start += n
    out = [np.sort(np.concatenate(p)) for p in parts]
    for i, p in enumerate(out):
        if len(p) == 0:
            raise UsageError(f"shift {shift.text!r}: subset {subset_name(i)} is empty; "
                             "use larger shares or a larger dataset")
    return out


def class_histogram(labels: torch.Tensor | np.ndarray, num_classes: int) -> list[int]:
    """Counts per class (multi-hot labels: the samples carrying each label)."""
    y = np.asarray(labels)
    if y.ndim == 2:
        return (y > 0.5).sum(0).astype(np.int64).tolist()
    return np.bincount(y, minlength=num_classes).tolist()


# ---------------------------------------------------------------- domain transforms

def parse_transform(spec: str) -> list[tuple[str, str]]:
    """Parse 'rotate=30+noise=0.1' into [(name, value), ...], checking names and values."""
    steps = []
    for part in filter(None, spec.split("+")):
        name, _, val = part.partition("=")
        if name not in TRANSFORMS:
            raise UsageError(f"unknown domain transform {name!r}; use {', '.join(TRANSFORMS)} "
                             "(e.g. rotate=30, noise=0.1, blur=1, keep=0/2, gray)")
        if name in ("rotate", "noise", "blur"):
            try:
                v = float(val)
            except ValueError:
                raise UsageError(f"domain transform {part!r} needs a number, e.g. {name}=1") from None
            if not math.isfinite(v):
                raise UsageError(f"domain transform {part!r}: value must be a finite number")
            if name != "rotate" and v < 0:
                raise UsageError(f"domain transform {part!r}: value must be >= 0")
        if name == "keep":
            try:
                [int(c) for c in val.split("/")]
            except ValueError:
                raise UsageError(f"domain transform {part!r}: list channels like keep=0/2") from None
        if name == "bands" and not all(val.split("/")):
            raise UsageError(f"domain transform {part!r}: list bands like bands=B02/B03/B04")
        steps.append((name, val))
    if sum(name == "bands" for name, _ in steps) > 1:
        raise UsageError(f"domain {spec!r} selects bands twice; give one bands= step")
    return steps


def channel_index(spec: str, channels: tuple[str, ...] | None) -> list[int] | None:
    """The input channels a domain keeps, by position in `channels` (None: all of them)."""
    for name, val in parse_transform(spec):
        if name == "bands":
            wanted = val.split("/")
            if channels is None:
                raise UsageError(f"domain transform bands={val}: this dataset's channels have no "
                                 "band names; band selection needs a multispectral dataset such "
                                 "as bigearthnet")
            unknown = [b for b in wanted if b not in channels]
            s1 = [b for b in unknown if b in SENSORS["S1"]]
            if s1:
                raise UsageError(f"Sentinel-1 band {s1[0]} is not among this dataset's channels; "
                                 "read BigEarthNet v2.0 with its Sentinel-1 bands: --dataset "
                                 "bigearthnet:version=2,sensors=S2+S1")
            if unknown:
                raise UsageError(f"unknown band {unknown[0]!r}; the bands are "
                                 f"{', '.join(channels)}")
            return [channels.index(b) for b in wanted]
    return None


def apply_transform(x: torch.Tensor, spec: str, seed: int = 0,
                    channels: tuple[str, ...] | None = None) -> torch.Tensor:
    """Apply a domain transform (deterministic given `seed`) to images in [0, 1]; `bands=`
    keeps the named channels of `channels`, in the order given. Images read from a memory-mapped
    source take band selection only (the other transforms need the images in memory)."""
    index = channel_index(spec, channels)
    if not torch.is_tensor(x):  # a data source: band selection happens as batches are read
        other = [n for n, _ in parse_transform(spec) if n not in ("none", "bands")]
        if other:
            raise UsageError(f"domain transform {other[0]!r} needs the images in memory; this "
                             "dataset is read from its memory-mapped cache (take a subset with "
                             "limit=N, or use bands= only)")
        return x if index is None else x.select_channels(index)
    for name, val in parse_transform(spec):
        if name == "bands":
            x = x[:, index].contiguous()
        elif name == "rotate":
            x = _rotate(x, float(val))
        elif name == "noise":
            g = torch.Generator().manual_seed(seed)
            x = (x + float(val) * torch.randn(x.shape, generator=g)).clamp(0, 1)
        elif name == "blur":
            x = _blur(x, float(val))
        elif name == "keep":
            chans = [int(c) for c in val.split("/")]
            if max(chans) >= x.shape[1] or min(chans) < 0:
                raise UsageError(f"domain transform keep={val}: images have {x.shape[1]} channels")
            mask = torch.zeros(x.shape[1], dtype=x.dtype)
            mask[chans] = 1
            x = x * mask[None, :, None, None]
        elif name == "gray":
            if x.shape[1] == 3:
                w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype)
                x = (x * w[None, :, None, None]).sum(1, keepdim=True).expand_as(x).contiguous()
    return x


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return x
    r = max(1, math.ceil(2 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    pad = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < r:  # images smaller than the kernel: crop the kernel
        k = k[r - pad: r + pad + 1] / k[r - pad: r + pad + 1].sum()
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
