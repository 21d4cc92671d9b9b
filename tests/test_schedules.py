"""Learning-rate schedules against the reference code's own formulas."""

from __future__ import annotations

import pytest
import torch

from modeconn.train.schedules import parse_schedule


def _garipov_lr(base_lr: float, epoch: int, total_epochs: int) -> float:
    """dnn-mode-connectivity train.py `learning_rate_schedule`, called with epoch = 1 … E."""
    alpha = epoch / total_epochs
    if alpha <= 0.5:
        return base_lr
    if alpha <= 0.9:
        return base_lr * (1.0 - (alpha - 0.5) / 0.4 * 0.99)
    return base_lr * 0.01


def _ours(epochs: int, base_lr: float = 1.0, steps: int = 4) -> list[list[float]]:
    sched = parse_schedule("curve")
    return [[base_lr * sched.factor(e, s / steps, epochs) for s in range(steps)]
            for e in range(epochs)]


def test_curve_schedule_of_ten_epochs_is_the_reference_sequence():
    # Five epochs at the full rate, then the decay reaches 1% at epoch 9 (alpha = 0.9).
    expected = [1.0, 1.0, 1.0, 1.0, 1.0, 0.7525, 0.505, 0.2575, 0.01, 0.01]
    got = _ours(10)
    for e, (row, want) in enumerate(zip(got, expected)):
        assert row == pytest.approx([want] * len(row), rel=1e-12, abs=1e-15), e + 1


@pytest.mark.parametrize("epochs", [1, 3, 7, 10, 30, 200])
def test_curve_schedule_matches_the_reference_per_epoch(epochs):
    want = [_garipov_lr(0.05, e, epochs) for e in range(1, epochs + 1)]
    got = _ours(epochs, base_lr=0.05)
    for e, row in enumerate(got):
        # Set once per epoch, as the reference does: constant within the epoch.
        assert row == pytest.approx([want[e]] * len(row), rel=1e-12), e + 1
    if epochs == 200:
        assert sum(lr == 0.05 for lr in want) == 100
        assert sum(lr == pytest.approx(0.0005) for lr in want) == 21


def test_curve_training_uses_the_reference_schedule():
    from modeconn.data import DataSpec, eval_data
    from modeconn.models import build_model, model_config
    from modeconn.paths.curves import fit_curve
    from modeconn.train import TrainConfig

    torch.manual_seed(0)
    data = eval_data(DataSpec())
    model = build_model(model_config("mlp", data.input_shape, 10, widths=[8]))
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.01 * torch.randn_like(v) for k, v in a.items()}
    seen: list[float] = []
    fit_curve(model, a, b, data.train_x[:256], data.train_y[:256],
              TrainConfig(epochs=10, batch_size=128, schedule="curve", lr=0.1),
              on_epoch=lambda e, loss, lr: seen.append(lr))
    assert seen == pytest.approx([_garipov_lr(0.1, e, 10) for e in range(1, 11)], rel=1e-12)


def test_training_logs_the_reference_curve_schedule():
    from modeconn.train import TrainConfig
    from modeconn.train.config import _lr_at

    cfg = TrainConfig(epochs=10, schedule="curve", lr=0.1)
    got = [_lr_at(cfg, e, 5)(b) for e in range(10) for b in range(5)]
    want = [_garipov_lr(0.1, e, 10) for e in range(1, 11) for _ in range(5)]
    assert got == pytest.approx(want, rel=1e-12)
