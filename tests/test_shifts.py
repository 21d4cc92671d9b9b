"""Data shifts (ALGORITHMS.md §3): iid, label skew, Dirichlet, domain; transforms; normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modeconn.data import (
    DataSpec,
    apply_transform,
    load_dataset,
    parse_shift,
    prepare_subsets,
    split_indices,
)
from modeconn.errors import UsageError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _split(data, text, seed=0, k=None):
    shift = parse_shift(text, data.num_classes, k)
    return shift, split_indices(data.train_y, shift, data.num_classes, seed)


def _assert_disjoint(parts):
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx), "subsets overlap"


def _class_counts(y, idx, k=10):
    return np.bincount(np.asarray(y)[idx], minlength=k)


# ---------------------------------------------------------------- iid


@pytest.mark.parametrize("text,shares", [("iid:50,50", [0.5, 0.5]), ("iid:20,80", [0.2, 0.8]),
                                         ("iid:25,25,25,25", [0.25] * 4),
                                         ("iid:10,30,60", [0.1, 0.3, 0.6])])
def test_iid_shares_stratified_disjoint_cover(digits, text, shares):
    shift, parts = _split(digits, text)
    assert shift.num_subsets == len(shares)
    assert len(parts) == len(shares)
    _assert_disjoint(parts)
    # Shares summing to 100 cover the whole training set.
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(digits.train_y)))
    total = _class_counts(digits.train_y, np.arange(len(digits.train_y)))
    for p, s in zip(parts, shares, strict=True):
        # Stratified: each class is shared in the given proportion, within one sample.
        assert np.all(np.abs(_class_counts(digits.train_y, p) - s * total) <= 1), (text, s)
        assert abs(len(p) - s * len(digits.train_y)) <= 10


def test_iid_default_is_two_halves(digits):
    shift, parts = _split(digits, "iid")
    assert shift.num_subsets == 2
    assert abs(len(parts[0]) - len(parts[1])) <= 10


def test_iid_partial_cover(digits):
    _, parts = _split(digits, "iid:10,20")
    _assert_disjoint(parts)
    n = len(digits.train_y)
    assert abs(len(parts[0]) - 0.1 * n) <= 10 and abs(len(parts[1]) - 0.2 * n) <= 10


def test_split_reproducible_by_seed(digits):
    _, a = _split(digits, "iid:50,50", seed=3)
    _, b = _split(digits, "iid:50,50", seed=3)
    _, c = _split(digits, "iid:50,50", seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    # The split depends only on the seed, not on global RNG state.
    np.random.seed(123)
    torch.manual_seed(123)
    _, d = _split(digits, "iid:50,50", seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, d, strict=True))


# ---------------------------------------------------------------- label skew


def test_label_skew_class_shares_exact(digits):
    shift, (a, b) = _split(digits, "label-skew:0-4=80,5-9=20")
    assert shift.num_subsets == 2
    _assert_disjoint([a, b])
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(len(digits.train_y)))
    total = _class_counts(digits.train_y, np.arange(len(digits.train_y)))
    ca, cb = _class_counts(digits.train_y, a), _class_counts(digits.train_y, b)
    for c in range(10):
        share = 0.8 if c < 5 else 0.2
        assert abs(ca[c] - share * total[c]) <= 1, c
        assert ca[c] + cb[c] == total[c]


def test_label_skew_three_way_and_plus_syntax(digits):
    shift, parts = _split(digits, "label-skew:0+2+4+6+8=60/20/20,1+3+5+7+9=10/10/80")
    assert shift.num_subsets == 3
    _assert_disjoint(parts)
    total = _class_counts(digits.train_y, np.arange(len(digits.train_y)))
    for i, p in enumerate(parts):
        counts = _class_counts(digits.train_y, p)
        for c in range(10):
            share = (0.6, 0.2, 0.2)[i] if c % 2 == 0 else (0.1, 0.1, 0.8)[i]
            assert abs(counts[c] - share * total[c]) <= 1


def test_label_skew_zero_share_gives_disjoint_classes(digits):
    _, (a, b) = _split(digits, "label-skew:0-4=100,5-9=0")
    assert set(np.asarray(digits.train_y)[a].tolist()) == {0, 1, 2, 3, 4}
    assert set(np.asarray(digits.train_y)[b].tolist()) == {5, 6, 7, 8, 9}


# ---------------------------------------------------------------- dirichlet


def test_dirichlet_reproducible_and_seed_dependent(digits):
    _, a = _split(digits, "dirichlet:0.5", seed=1, k=3)
    _, b = _split(digits, "dirichlet:0.5", seed=1, k=3)
    _, c = _split(digits, "dirichlet:0.5", seed=2, k=3)
    assert len(a) == 3
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    _assert_disjoint(a)
    assert sum(len(p) for p in a) == len(digits.train_y)


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_balanced(digits):
    def skew(alpha):
        _, (a, b) = _split(digits, f"dirichlet:{alpha}", seed=0)
        ca = _class_counts(digits.train_y, a)
        tot = _class_counts(digits.train_y, np.arange(len(digits.train_y)))
        return np.abs(ca / tot - 0.5).mean()

    assert skew(1000.0) < 0.05
    assert skew(0.1) > 0.2


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("text,match", [
    ("random:50,50", "unknown shift"),
    ("iid:60,60", "100"),
    ("iid:50", "two"),
    ("iid:0,100", "positive"),
    ("iid:-10,50", "positive"),
    ("iid:a,b", "percentages"),
    ("label-skew:0-4=80", "5"),  # classes 5-9 have no share
    ("label-skew:0-4=80,5-10=20", "outside"),
    ("label-skew:0-5=80,5-9=20", "two groups"),
    ("label-skew:0-4=120,5-9=20", "between 0 and"),
    ("label-skew:0-4=-20,5-9=20", "between 0 and"),
    ("label-skew:0-4=80/20,5-9=20/40/40", "same number"),
    ("label-skew:0-4,5-9", "CLASSES=SHARE"),
    ("label-skew:a-b=80,5-9=20", "numbers"),
    ("dirichlet:0", "positive"),
    ("dirichlet:-1", "positive"),
    ("dirichlet:nan", "positive"),
    ("dirichlet:inf", "positive"),
    ("dirichlet:", "ALPHA"),
    ("domain:none", "'\\|'"),
    ("domain:none|flip=1", "unknown domain transform"),
    ("domain:none|rotate=abc", "number"),
    ("domain:none|noise=-1", ">= 0"),
    ("domain:none|keep=r", "channels"),
])
def test_bad_shift_strings(text, match):
    with pytest.raises(UsageError, match=match):
        parse_shift(text, 10)


def test_dirichlet_needs_two_subsets():
    with pytest.raises(UsageError, match="2 subsets"):
        parse_shift("dirichlet:0.5", 10, num_subsets=1)


def test_empty_subset_is_usage_error(digits):
    with pytest.raises(UsageError, match="empty"):
        _split(digits, "iid:0.01,99")
    with pytest.raises(UsageError, match="empty"):
        _split(digits, "label-skew:0-9=100")
    tiny = load_dataset("synthetic:n=10,test=5,classes=5")
    shift = parse_shift("iid:10,90", 5)
    with pytest.raises(UsageError, match="subset a is empty"):
        split_indices(tiny.train_y, shift, 5, 0)


def test_keep_channel_out_of_range_is_usage_error():
    with pytest.raises(UsageError, match="channels"):
        apply_transform(torch.rand(2, 1, 4, 4), "keep=2")


# ---------------------------------------------------------------- domain transforms


def _image(n=3, c=1, h=9, w=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, c, h, w), generator=g)


def test_rotate_zero_is_identity():
    x = _image()
    assert torch.allclose(apply_transform(x, "rotate=0"), x, atol=1e-5)
    assert torch.equal(apply_transform(x, "none"), x)
    assert torch.equal(apply_transform(x, ""), x)


@pytest.mark.parametrize("size", [8, 9])
def test_rotate_matches_rot90(size):
    x = _image(c=3, h=size, w=size)
    r90 = apply_transform(x, "rotate=90")
    r180 = apply_transform(x, "rotate=180")
    # Either direction is fine for 90°, but it must be an exact quarter turn.
    assert any(torch.allclose(r90, torch.rot90(x, k, dims=(2, 3)), atol=1e-4) for k in (1, 3))
    assert torch.allclose(r180, torch.rot90(x, 2, dims=(2, 3)), atol=1e-4)
    assert torch.allclose(apply_transform(r90, "rotate=90"), r180, atol=1e-4)
    assert torch.allclose(apply_transform(x, "rotate=90+rotate=90"), r180, atol=1e-4)
    assert torch.allclose(apply_transform(x, "rotate=-90+rotate=90"), x, atol=1e-4)


def test_rotate_arbitrary_angle_changes_image_keeps_range():
    x = _image(h=16, w=16)
    r = apply_transform(x, "rotate=30")
    assert r.shape == x.shape
    assert not torch.allclose(r, x, atol=1e-2)
    assert float(r.min()) >= 0 and float(r.max()) <= 1 + 1e-6


def test_noise_deterministic_by_seed():
    x = _image()
    a = apply_transform(x, "noise=0.2", seed=5)
    b = apply_transform(x, "noise=0.2", seed=5)
    c = apply_transform(x, "noise=0.2", seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(apply_transform(x, "noise=0"), x)


def test_blur_smooths_and_preserves_mean():
    x = load_dataset("digits").train_x[:50]
    b = apply_transform(x, "blur=1")
    assert b.shape == x.shape
    assert abs(float(b.mean()) - float(x.mean())) < 0.02
    # Neighbouring pixels differ less after blurring.
    tv = lambda t: float((t[..., 1:] - t[..., :-1]).abs().mean())  # noqa: E731
    assert tv(b) < 0.7 * tv(x)
    assert torch.equal(apply_transform(x, "blur=0"), x)
    # A constant image stays constant.
    const = torch.full((1, 2, 5, 5), 0.3)
    assert torch.allclose(apply_transform(const, "blur=2"), const, atol=1e-6)


def test_keep_zeroes_other_channels():
    x = _image(c=3) + 0.01
    k = apply_transform(x, "keep=0")
    assert torch.equal(k[:, 0], x[:, 0])
    assert float(k[:, 1:].abs().max()) == 0.0
    k2 = apply_transform(x, "keep=0/2")
    assert torch.equal(k2[:, 2], x[:, 2]) and float(k2[:, 1].abs().max()) == 0.0


def test_gray_makes_channels_equal():
    x = _image(c=3)
    g = apply_transform(x, "gray")
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])
    expect = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(g[:, 0], expect, atol=1e-6)


# ---------------------------------------------------------------- prepared subsets


def test_domain_shift_subsets_see_transformed_inputs():
    spec = DataSpec("digits", shift="domain:none|rotate=180", norm="none")
    a, b = prepare_subsets(spec)
    assert a.domain == "none" and b.domain == "rotate=180"
    raw = load_dataset("digits")
    # Test sets: the same images, under each subset's domain.
    assert torch.equal(a.test_x, raw.test_x)
    assert torch.allclose(b.test_x, torch.rot90(raw.test_x, 2, dims=(2, 3)), atol=1e-4)
    assert torch.equal(a.test_y, b.test_y)
    assert abs(len(a.train_y) - len(b.train_y)) <= 10


def test_domain_noise_differs_between_subsets_and_is_reproducible():
    spec = DataSpec("digits", shift="domain:noise=0.1|noise=0.1", norm="none", split_seed=2)
    a1, b1 = prepare_subsets(spec)
    a2, b2 = prepare_subsets(spec)
    assert torch.equal(a1.train_x, a2.train_x) and torch.equal(b1.test_x, b2.test_x)
    assert not torch.equal(a1.test_x, b1.test_x)  # independent noise per subset


def test_prepare_subsets_partition_training_set():
    spec = DataSpec("digits", shift="iid:30,70", split_seed=7, norm="none")
    parts = prepare_subsets(spec)
    raw = load_dataset("digits")
    assert sum(len(p.train_y) for p in parts) == len(raw.train_y)
    assert [p.spec.subset for p in parts] == [0, 1]
    for p in parts:
        assert p.histogram == np.bincount(p.train_y.numpy(), minlength=10).tolist()
        assert torch.equal(p.test_x, raw.test_x)
    # The same split seed reproduces the same subsets.
    again = prepare_subsets(spec)
    assert torch.equal(parts[0].train_x, again[0].train_x)


def test_global_norm_shared_across_subsets():
    parts = prepare_subsets(DataSpec("digits", shift="label-skew:0-4=90,5-9=10", norm="global"))
    assert parts[0].mean == parts[1].mean and parts[0].std == parts[1].std
    whole = prepare_subsets(DataSpec("digits", norm="global"))[0]
    assert parts[0].mean == whole.mean


def test_subset_norm_standardises_each_subset_per_channel():
    spec = DataSpec("synthetic:n=400,test=50,shape=3x6x6,classes=4",
                    shift="domain:none|keep=0+noise=0.2", norm="subset")
    parts = prepare_subsets(spec)
    assert parts[0].mean != parts[1].mean
    for p in parts:
        m = p.train_x.mean(dim=(0, 2, 3))
        s = p.train_x.std(dim=(0, 2, 3))
        assert torch.allclose(m, torch.zeros(3), atol=1e-4)
        # A channel zeroed by keep=... has no spread; every other channel has unit std.
        for ch in range(3):
            assert math.isclose(float(s[ch]), 1.0, abs_tol=1e-3) or float(s[ch]) == 0.0
    assert torch.allclose(parts[0].train_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
