"""The flat public API: the verbs from the top, and arguments of the wrong kind in one line."""

from __future__ import annotations

import pytest
import torch

import modeconn
from modeconn.models import model_config
from modeconn.train import init_model


def test_every_public_name_is_importable_from_the_top():
    for name in modeconn.__all__:
        assert getattr(modeconn, name) is not None, name
    assert {"Evaluator", "interpolate", "weight_matching", "activation_matching", "ste_matching",
            "merge_many", "ste_mm", "repair", "fit_curve", "plane", "loss_plane",
            "hessian_trace", "ensemble_metrics"} <= set(modeconn.__all__)


@pytest.fixture(scope="module")
def setup():
    cfg = model_config("mlp", (1, 8, 8), 10, width=8)
    model = init_model(cfg, 0)
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    return model, model.state_dict(), x, y


WRONG = {
    "dict as the model": (lambda m, sd, x, y: modeconn.interpolate(sd, sd, sd, {"t": (x, y)}),
                          "model must be an nn.Module (the model template), got OrderedDict"),
    "module as an endpoint": (lambda m, sd, x, y: modeconn.interpolate(m, m, sd, {"t": (x, y)}),
                              "must be a parameter dict (name -> tensor), got the module MLP; "
                              "pass its .state_dict()"),
    "dict as the engine's model": (lambda m, sd, x, y: modeconn.Evaluator(sd, {"t": (x, y)}),
                                   "model must be an nn.Module"),
    "splits as a tuple": (lambda m, sd, x, y: modeconn.Evaluator(m, (x, y)),
                          "splits must map split names to (inputs, labels), got tuple"),
    "module as a point": (lambda m, sd, x, y: modeconn.Evaluator(m, {"t": (x, y)}).evaluate([m]),
                          "parameter point 1 must be a parameter dict"),
    "modules as curve ends": (lambda m, sd, x, y: modeconn.fit_curve(
        m, m, m, x, y, modeconn.TrainConfig(epochs=1)), "must be a parameter dict"),
    "modules for the plane": (lambda m, sd, x, y: modeconn.plane(m, m, m),
                              "must be a parameter dict"),
    "dict as the Hessian's model": (lambda m, sd, x, y: modeconn.hessian_trace(sd, sd, x, y),
                                    "model must be an nn.Module"),
    "modules to average": (lambda m, sd, x, y: modeconn.average([m, m]),
                           "params_list[0] must be a parameter dict"),
    "tensors as a path": (lambda m, sd, x, y: modeconn.linear_path(x, x),
                          "must be a parameter dict (name -> tensor), got Tensor"),
    "tensor as a spec": (lambda m, sd, x, y: modeconn.weight_matching(sd, sd, x),
                         "spec must be a PermutationSpec or None, got Tensor"),
}


@pytest.mark.parametrize("case", WRONG)
def test_an_argument_of_the_wrong_kind_is_one_line_naming_it(setup, case):
    call, message = WRONG[case]
    with pytest.raises(TypeError) as e:
        call(*setup)
    assert message in str(e.value) and "\n" not in str(e.value)
