"""The parameter-dict floor (`modeconn.params`) on small hand-computed dicts: weighted
combination, mean, the one rule for integer buffers, flattening, weight vs statistic keys read
from `named_buffers()`, BatchNorm detection — known answers, in the spirit of optax's tree_utils
tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeconn.params import (
    batchnorm_modules,
    check_module,
    check_params,
    combine,
    distance,
    flatten,
    has_batchnorm,
    is_float,
    mean,
    statistic_keys,
    weight_keys,
)


def _dicts():
    """Three parameter dicts with a weight, a statistic and an integer counter each."""
    return [
        {"w": torch.tensor([1.0, 2.0]), "rm": torch.tensor([4.0]), "n": torch.tensor(3)},
        {"w": torch.tensor([3.0, 6.0]), "rm": torch.tensor([0.0]), "n": torch.tensor(7)},
        {"w": torch.tensor([5.0, -2.0]), "rm": torch.tensor([8.0]), "n": torch.tensor(11)},
    ]


def _bn_net():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2, 3))


# ---------------------------------------------------------------- combine


def test_combine_is_the_weighted_sum_of_the_float_entries():
    a, b, c = _dicts()
    out = combine([a, b, c], [0.5, 0.25, 0.25])
    assert out["w"].tolist() == [0.5 * 1 + 0.25 * 3 + 0.25 * 5, 0.5 * 2 + 0.25 * 6 + 0.25 * -2]
    assert out["rm"].tolist() == [0.5 * 4 + 0.25 * 0 + 0.25 * 8]
    assert list(out) == ["w", "rm", "n"]  # the first dict's order


def test_combine_with_weights_outside_the_simplex_extrapolates():
    a, b, _ = _dicts()
    assert combine([a, b], [-1.0, 2.0])["w"].tolist() == [5.0, 10.0]
    assert combine([a, b], [0.0, 0.0])["w"].tolist() == [0.0, 0.0]


def test_combine_with_a_single_unit_weight_returns_that_dict_bit_for_bit():
    a, b, _ = _dicts()
    a["w"] = torch.tensor([0.1, -0.0, float("inf")])
    b["w"] = torch.tensor([float("nan"), 1.0, 2.0])
    out = combine([a, b], [1.0, 0.0])  # zero weights are skipped, so b's nan does not leak in
    assert torch.equal(out["w"].view(torch.int32), a["w"].view(torch.int32))  # -0.0 stays -0.0


def test_combine_refuses_mismatched_weights():
    a, b, _ = _dicts()
    with pytest.raises(ValueError, match="1 weights for 2 parameter dicts"):
        combine([a, b], [1.0])
    with pytest.raises(ValueError, match="0 weights for 0 parameter dicts"):
        combine([], [])


# ---------------------------------------------------------------- mean


def test_mean_is_the_uniform_average():
    out = mean(_dicts())
    assert out["w"].tolist() == [3.0, 2.0]
    assert out["rm"].tolist() == [4.0]


def test_mean_with_weights_is_the_weighted_average():
    a, b, _ = _dicts()
    assert mean([a, b], [0.75, 0.25])["w"].tolist() == [1.5, 3.0]
    assert mean([a, b], torch.tensor([0.0, 1.0]))["w"].tolist() == [3.0, 6.0]


def test_mean_of_float32_dicts_matches_combine_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    ds = [{"w": torch.randn(257, generator=g)} for _ in range(3)]
    assert torch.equal(mean(ds)["w"], combine(ds, [1 / 3] * 3)["w"])


def test_mean_of_nothing_is_refused():
    with pytest.raises(ValueError, match="the mean of no parameter dicts"):
        mean([])


# ---------------------------------------------------------------- the integer-buffer rule


@pytest.mark.parametrize("op", [
    lambda ds: combine(ds, [0.2, 0.3, 0.5]),
    lambda ds: combine(ds, [0.0, 0.0, 1.0]),  # even when the first dict weighs nothing
    lambda ds: mean(ds),
    lambda ds: mean(ds, [0.0, 0.0, 1.0]),
], ids=["combine", "combine-first-weighs-zero", "mean", "mean-first-weighs-zero"])
def test_integer_entries_are_a_copy_of_the_first_dicts(op):
    ds = _dicts()
    out = op(ds)
    assert out["n"].dtype == torch.int64 and out["n"].item() == 3
    out["n"].add_(100)  # the result shares no memory with its inputs
    assert ds[0]["n"].item() == 3
    out["w"].add_(100)
    assert ds[0]["w"].tolist() == [1.0, 2.0] and ds[2]["w"].tolist() == [5.0, -2.0]


def test_integer_rule_on_a_real_batchnorm_state_dict():
    a, b = _bn_net(), _bn_net()
    a[1].num_batches_tracked.fill_(5)
    b[1].num_batches_tracked.fill_(9)
    sa, sb = a.state_dict(), b.state_dict()
    for out in (combine([sa, sb], [0.5, 0.5]), mean([sa, sb])):
        assert out["1.num_batches_tracked"].item() == 5
        assert out["1.num_batches_tracked"].data_ptr() != sa["1.num_batches_tracked"].data_ptr()
        assert torch.equal(out["1.running_mean"], (sa["1.running_mean"] + sb["1.running_mean"]) / 2)


def test_is_float_separates_combinable_entries():
    assert is_float(torch.tensor(1.0)) and is_float(torch.tensor(1.0, dtype=torch.float16))
    assert is_float(torch.tensor(1 + 1j))
    assert not is_float(torch.tensor(1)) and not is_float(torch.tensor(True))


# ---------------------------------------------------------------- flatten, distance


def test_flatten_is_the_float_entries_in_order_as_float64():
    p = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "n": torch.tensor(7),
         "b": torch.tensor([5.0], dtype=torch.float16)}
    v = flatten(p)
    assert v.dtype == torch.float64 and v.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert flatten(p, ["b", "a"]).tolist() == [5.0, 1.0, 2.0, 3.0, 4.0]


def test_flatten_round_trips_through_split_and_view():
    net = _bn_net()
    p = net.state_dict()
    keys = weight_keys(p, statistic_keys(net))
    parts = torch.split(flatten(p, keys), [p[k].numel() for k in keys])
    back = {k: part.view_as(p[k]).to(p[k].dtype) for k, part in zip(keys, parts, strict=True)}
    assert all(torch.equal(back[k], p[k]) for k in keys)


def test_distance_over_float_entries_by_hand():
    a, b, _ = _dicts()
    # w: (1-3)² + (2-6)² = 20; rm: (4-0)² = 16; the counter is not a coordinate.
    assert distance(a, b) == pytest.approx(36 ** 0.5, abs=0)


# ---------------------------------------------------------------- weight vs statistic keys


def test_statistic_keys_come_from_named_buffers_not_key_names():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.running_mean = nn.Parameter(torch.zeros(2))  # a weight named like a statistic
            self.register_buffer("scale", torch.ones(2))  # a statistic named like a weight
            self.register_buffer("steps", torch.tensor(0))  # an integer buffer: not combined

    odd = Odd()
    assert statistic_keys(odd) == {"scale"}
    assert weight_keys(odd.state_dict(), statistic_keys(odd)) == ["running_mean"]


def test_weight_and_statistic_keys_of_a_batchnorm_net():
    net = _bn_net()
    assert statistic_keys(net) == {"1.running_mean", "1.running_var"}
    assert weight_keys(net.state_dict(), statistic_keys(net)) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    # Without the statistics every floating-point entry counts; the counter never does.
    assert "1.running_mean" in weight_keys(net.state_dict())
    assert "1.num_batches_tracked" not in weight_keys(net.state_dict())


def test_statistic_keys_include_shared_buffers_under_every_name():
    bn = nn.BatchNorm1d(2)
    net = nn.Sequential(bn, bn)
    assert statistic_keys(net) == {"0.running_mean", "0.running_var",
                                   "1.running_mean", "1.running_var"}


# ---------------------------------------------------------------- BatchNorm detection


def test_has_batchnorm():
    assert has_batchnorm(_bn_net())
    assert [n for n, _ in batchnorm_modules(_bn_net())] == ["1"]
    assert not has_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    # BatchNorm without running statistics normalises by the batch: nothing to average or reset.
    assert not has_batchnorm(nn.Sequential(nn.BatchNorm1d(2, track_running_stats=False)))
    assert has_batchnorm(nn.Sequential(nn.Sequential(nn.SyncBatchNorm(2))))


# ---------------------------------------------------------------- argument checks


def test_check_params_and_check_module_name_the_argument():
    net = _bn_net()
    assert check_params(net.state_dict()) is not None
    with pytest.raises(TypeError, match=r"^a must be a parameter dict .* got the module "
                                        r"Sequential; pass its \.state_dict\(\)$"):
        check_params(net, "a")
    with pytest.raises(TypeError, match=r"^params must be a parameter dict .* got list$"):
        check_params([1, 2])
    with pytest.raises(TypeError, match=r"got dict$"):
        check_params({"w": [1.0]})
    assert check_module(net) is net
    with pytest.raises(TypeError, match=r"^model must be an nn\.Module .* got dict; parameter "
                                        r"dicts are the other arguments$"):
        check_module(dict(net.state_dict()))
