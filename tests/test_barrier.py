"""Barriers and Δ accuracy on hand-made curves (ALGORITHMS.md §2): every expected value below is
worked out by hand from the definitions."""

from __future__ import annotations

import pytest

from modeconn.errors import UsageError
from modeconn.paths import grid
from modeconn.paths.barrier import DEFINITIONS, barrier, path_summary

T5 = [0.0, 0.25, 0.5, 0.75, 1.0]
T9 = [i / 8 for i in range(9)]


def test_definitions_are_the_three_documented_ones():
    assert set(DEFINITIONS) == {"linear", "midpoint", "local-min"}


def test_symmetric_bump_all_definitions():
    # Equal endpoints, peak 2 at the middle: the line is flat at 1, so every definition gives 1.
    v = [1.0, 1.5, 2.0, 1.5, 1.0]
    for d in DEFINITIONS:
        b, lam = barrier(T5, v, d)
        assert b == pytest.approx(1.0, abs=1e-12), d
        assert lam == 0.5, d


def test_linear_and_midpoint_differ_on_an_asymmetric_curve():
    # line = 1 + 1.8 t = [1, 1.45, 1.9, 2.35, 2.8]; v − line = [0, 1.55, 0.7, −0.15, 0].
    v = [1.0, 3.0, 2.6, 2.2, 2.8]
    b, lam = barrier(T5, v, "linear")
    assert b == pytest.approx(1.55, abs=1e-12) and lam == 0.25
    # midpoint: max v − ½(L0 + L1) = 3 − 1.9.
    b, lam = barrier(T5, v, "midpoint")
    assert b == pytest.approx(1.1, abs=1e-12) and lam == 0.25


def test_midpoint_uses_the_maximum_of_the_curve_not_of_the_excess():
    # line = 2·t; v − line = [0, 0.5, 0.0, 0.4, 0] → linear 0.5 at λ=0.25;
    # max v = 2 at λ=1 → midpoint = 2 − ½(0 + 2) = 1.
    v = [0.0, 1.0, 1.0, 1.9, 2.0]
    b_lin, lam_lin = barrier(T5, v, "linear")
    assert b_lin == pytest.approx(0.5) and lam_lin == 0.25
    b_mid, lam_mid = barrier(T5, v, "midpoint")
    assert b_mid == pytest.approx(1.0) and lam_mid == 1.0


def test_local_min_measures_the_peak_against_the_dips_on_either_side():
    # L(0) = L(1) = 1; the curve dips to 0.2 at λ=0.25, peaks at 1.4 at λ=0.5, dips to 0.5 at
    # λ=0.875.  λ* = 0.5 (largest excess over the flat line, 0.4).  λ_l = 0.25, λ_r = 0.875;
    # the line through (0.25, 0.2) and (0.875, 0.5) at 0.5: w = 0.25/0.625 = 0.4,
    # 0.6·0.2 + 0.4·0.5 = 0.32, so B = 1.4 − 0.32 = 1.08.
    v = [1.0, 0.6, 0.2, 0.8, 1.4, 1.0, 0.8, 0.5, 1.0]
    b, lam = barrier(T9, v, "local-min")
    assert b == pytest.approx(1.08, abs=1e-12)
    assert lam == 0.5
    # The other two definitions see only the excess over the endpoints: 0.4.
    assert barrier(T9, v, "linear")[0] == pytest.approx(0.4, abs=1e-12)
    assert barrier(T9, v, "midpoint")[0] == pytest.approx(0.4, abs=1e-12)


def test_local_min_dip_on_one_side_only():
    # Dip only left of the peak: λ* = 0.5 (excess 0.6 over the flat line at 1), λ_l = 0.25 (0.2),
    # λ_r = 1 (1.0).  Line (0.25, 0.2)–(1, 1.0) at 0.5: w = 1/3, 2/3·0.2 + 1/3·1.0 = 0.4667,
    # so B = 1.6 − 0.4667 = 1.1333.
    v = [1.0, 0.6, 0.2, 0.9, 1.6, 1.4, 1.2, 1.1, 1.0]
    b, lam = barrier(T9, v, "local-min")
    assert lam == 0.5
    assert b == pytest.approx(1.6 - (2 / 3 * 0.2 + 1 / 3 * 1.0), abs=1e-12)


@pytest.mark.parametrize("v", [
    [1.0, 1.5, 2.0, 1.5, 1.0],          # symmetric bump
    [1.0, 2.5, 3.0, 2.5, 2.0],          # asymmetric endpoints, no dip
    [0.3, 0.9, 0.7, 0.8, 0.6],          # two humps, never below the endpoints
    [2.0, 1.5, 1.0, 0.5, 0.0],          # monotone decreasing
])
def test_local_min_equals_linear_without_an_interior_dip(v):
    assert barrier(T5, v, "local-min") == pytest.approx(barrier(T5, v, "linear"), abs=1e-12)


def test_local_min_equals_linear_when_interior_values_only_tie_an_endpoint():
    # Error curves are multiples of 1/N, so an interior value equal to an endpoint is common.
    # Nothing dips below the endpoints here (0.2 at λ=0.75 equals L(1)), so local-min must equal
    # linear: line = 0.1 + 0.1 t, excess 0.35 at λ=0.5.
    v = [0.1, 0.3, 0.5, 0.2, 0.2]
    b_lin, lam = barrier(T5, v, "linear")
    assert b_lin == pytest.approx(0.35, abs=1e-12) and lam == 0.5
    b_loc, _ = barrier(T5, v, "local-min")
    assert b_loc == pytest.approx(0.35, abs=1e-12)


@pytest.mark.parametrize("v", [
    [0.0, 0.1, 0.3, 0.6, 1.0],   # convex increasing
    [1.0, 0.6, 0.3, 0.1, 0.0],   # convex decreasing
    [0.0, 0.5, 1.0, 1.5, 2.0],   # exactly linear
])
def test_monotone_convex_curve_has_no_linear_barrier(v):
    b, _ = barrier(T5, v, "linear")
    assert b == pytest.approx(0.0, abs=1e-12)
    assert barrier(T5, v, "local-min")[0] == pytest.approx(0.0, abs=1e-12)


def test_curve_below_its_endpoints_has_negative_midpoint_but_zero_linear_barrier():
    v = [1.0, 0.5, 0.2, 0.5, 1.0]
    assert barrier(T5, v, "linear") == (0.0, 0.0)
    assert barrier(T5, v, "midpoint")[0] == pytest.approx(0.0)  # max is an endpoint: 1 − 1


def test_non_uniform_grid():
    # Grid [0, 0.1, 0.5, 1]; endpoints 0 and 1 → line = t; excess at 0.1 is 0.9, at 0.5 it is 0.3.
    b, lam = barrier([0.0, 0.1, 0.5, 1.0], [0.0, 1.0, 0.8, 1.0], "linear")
    assert b == pytest.approx(0.9) and lam == 0.1


def test_delta_acc_is_measured_at_the_loss_barrier_lambda():
    # The loss peaks at λ=0.25, the accuracy is lowest at λ=0.5: Δ must use λ* = 0.25:
    # Δ = 0.8 − ½(0.9 + 0.95) = −0.125.
    loss = [0.1, 0.9, 0.5, 0.2, 0.1]
    acc = [0.9, 0.8, 0.3, 0.85, 0.95]
    s = path_summary(T5, loss, acc)
    assert s["lambda_star"] == 0.25
    assert s["loss"]["linear"] == {"barrier": pytest.approx(0.8), "lambda": 0.25}
    assert s["delta_acc"] == pytest.approx(-0.125, abs=1e-12)
    # The error barrier has its own λ: error = [.1, .2, .7, .15, .05], line .1 − .05 t,
    # excess at 0.5 = 0.7 − 0.075 = 0.625.
    assert s["error"]["linear"]["barrier"] == pytest.approx(0.625, abs=1e-12)
    assert s["error"]["linear"]["lambda"] == 0.5
    # midpoint error: max error 0.7 − ½(0.1 + 0.05).
    assert s["error"]["midpoint"]["barrier"] == pytest.approx(0.625, abs=1e-12)
    assert s["loss"]["midpoint"]["barrier"] == pytest.approx(0.8, abs=1e-12)


@pytest.mark.parametrize("loss", [
    [1.0, 0.6, 0.4, 0.3, 0.2],    # falls from A to B, below the line: the largest excess is at λ=0
    [0.2, 0.3, 0.4, 0.6, 1.0],    # rises, below the line
    [1.0, 0.5, 0.2, 0.5, 1.0],    # dips between equal endpoints
    [0.5, 0.5, 0.5, 0.5, 0.5],    # flat: no excess anywhere
])
def test_delta_acc_is_zero_without_an_interior_loss_barrier(loss):
    # Endpoints of different accuracy: the old Δ at λ* = 0 read ½(0.80 − 0.96) = −0.08, a "drop"
    # on a path without any barrier.
    acc = [0.80, 0.85, 0.9, 0.93, 0.96]
    s = path_summary(T5, loss, acc)
    assert s["loss"]["linear"]["barrier"] == 0.0
    assert s["interior"] is False
    assert s["delta_acc"] == 0.0
    assert s["connected"] is True


def test_delta_acc_with_an_interior_barrier_is_flagged_interior():
    s = path_summary(T5, [0.1, 0.9, 0.5, 0.2, 0.1], [0.9, 0.8, 0.3, 0.85, 0.95])
    assert s["interior"] is True and s["lambda_star"] == 0.25
    assert s["delta_acc"] == pytest.approx(-0.125, abs=1e-12)


def test_path_summary_has_every_definition_for_loss_and_error():
    s = path_summary(T5, [1.0, 1.2, 1.3, 1.1, 1.0], [0.9, 0.9, 0.8, 0.9, 0.9])
    for metric in ("loss", "error"):
        assert set(s[metric]) == set(DEFINITIONS)
        for d in DEFINITIONS:
            assert set(s[metric][d]) == {"barrier", "lambda"}
    assert s["error"]["linear"]["barrier"] == pytest.approx(0.1)
    assert s["delta_acc"] == pytest.approx(-0.1)


@pytest.mark.parametrize("height, tolerance, connected", [
    (0.005, 0.01, True),
    (0.02, 0.01, False),
    (0.02, 0.05, True),
    (0.0, 0.0, True),
])
def test_connected_flag_follows_the_tolerance(height, tolerance, connected):
    loss = [0.5, 0.5 + height, 0.5]
    s = path_summary([0.0, 0.5, 1.0], loss, [0.9, 0.9, 0.9], tolerance=tolerance)
    assert s["loss"]["linear"]["barrier"] == pytest.approx(height)
    assert s["connected"] is connected
    assert s["tolerance"] == tolerance


@pytest.mark.parametrize("ts, v", [
    ([0.0, 0.5, 0.9], [1.0, 2.0, 1.0]),          # does not end at 1
    ([0.1, 0.5, 1.0], [1.0, 2.0, 1.0]),          # does not start at 0
    ([0.0, 0.6, 0.4, 1.0], [1.0, 2.0, 2.0, 1.0]),  # not increasing
    ([0.0, 0.5, 0.5, 1.0], [1.0, 2.0, 2.0, 1.0]),  # repeated value
    ([0.0, 0.5, 1.0], [1.0, 2.0]),               # lengths differ
    ([0.0], [1.0]),                              # a single point
    ([], []),
])
def test_bad_grids_raise_usage_error(ts, v):
    for d in DEFINITIONS:
        with pytest.raises(UsageError):
            barrier(ts, v, d)


def test_unknown_definition_raises_usage_error():
    with pytest.raises(UsageError, match="local-min"):
        barrier(T5, [0, 1, 2, 1, 0], "maximum")


def test_grid_helper():
    assert grid(5) == T5
    assert grid(2) == [0.0, 1.0]
    for n in (1, 0, -3):
        with pytest.raises(UsageError):
            grid(n)
