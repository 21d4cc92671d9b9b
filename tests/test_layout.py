"""Memory layout policy on CPU: channels-last where it is proven right.

Forward passes use it on any CPU; gradient paths (training, curve fitting) only on oneDNN's
AVX-512 kernels. oneDNN picks its kernels by the CPU's instruction set; `ONEDNN_MAX_CPU_ISA=AVX2`
makes any x86 machine with AVX2 take the kernels of an AVX2-only CPU (the AMD EPYC where a ResNet-8
at width 0.25 crashed in `loss.backward()` at one thread). The variable is read once per process,
so these checks run in subprocesses.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from modeconn import train
from modeconn.models import model_config
from modeconn.train import TrainConfig, init_model


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


needs_avx2 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not _has_avx2(),
                                reason="oneDNN's AVX2 kernels need an x86 CPU with AVX2")


def _env(threads: int, isa: str | None = "AVX2") -> dict[str, str]:
    """The environment of a subprocess on oneDNN's `isa` kernels (None: the CPU's own)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    env.update({"OMP_NUM_THREADS": str(threads),
                "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])})
    if isa is not None:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    return env


NATIVE_AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"


@needs_avx2
def test_resnet8_at_width_quarter_trains_at_one_thread_on_avx2_kernels(tmp_path):
    """The configuration that aborted in 5 of 5 runs ('double free or corruption') exits 0."""
    for i in range(3):
        r = subprocess.run([sys.executable, "-m", "modeconn", "train", "--dataset", "digits",
                            "--model", "resnet8", "--width", "0.25", "--epochs", "1",
                            "--shift", "iid:50,50", "--quiet", "--device", "cpu",
                            "--out", str(tmp_path / f"run{i}")],
                           env=_env(1), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"run {i}: exit {r.returncode}\n{r.stderr[-2000:]}"


PROBE = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F
    from modeconn import train
    from modeconn.evaluate import Evaluator, channels_last_gradients_safe
    from modeconn.models import model_config
    from modeconn.train import TrainConfig, init_model

    torch.set_num_threads(int(sys.argv[1]))
    worst = {"grad": 0.0, "eval": 0.0}
    layouts = set()
    for name, opts, shape in [("resnet8", {"width": 0.25}, (1, 8, 8)),
                              ("resnet8", {"width": 0.25}, (3, 16, 16)),
                              ("resnet8", {"width": 0.375}, (3, 8, 8)),
                              ("vgg11", {"width": 0.125}, (3, 32, 32)),
                              ("convnet", {"dropout": 0.0}, (3, 16, 16))]:
        cfg = model_config(name, shape, 10, **opts)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(48, *shape, generator=g), torch.arange(48) % 10
        model, ref = init_model(cfg, 0), init_model(cfg, 0).double()
        tc = TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.0)
        stepper = train.Stepper(model, train.make_optimizer(model.parameters(), tc), x, y, 48)
        stepper.step(torch.arange(48))
        layouts.add(any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters()))
        opt = train.make_optimizer(ref.parameters(), tc)
        F.cross_entropy(ref(x.double()), y).backward()
        opt.step()
        got = torch.cat([p.grad.double().reshape(-1) for p in model.parameters()])
        want = torch.cat([q.grad.reshape(-1) for q in ref.parameters()])
        worst["grad"] = max(worst["grad"], ((got - want).norm() / want.norm()).item())
        ref.eval()
        (res,) = Evaluator(model, {"t": (x, y)}, bn_reset="off").evaluate([model.state_dict()])
        want = F.cross_entropy(ref(x.double()), y).item()
        worst["eval"] = max(worst["eval"], abs(res["t"]["loss"] - want) / abs(want))
    print(worst["grad"], worst["eval"], channels_last_gradients_safe(), sorted(layouts))
""")


ISAS = [pytest.param("AVX2", marks=needs_avx2, id="avx2-kernels"),
        pytest.param(None, marks=pytest.mark.skipif(not NATIVE_AVX512, reason="needs AVX-512"),
                     id="avx512-kernels")]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_training_gradients_and_evaluation_match_float64(isa, threads):
    """The gradient of a training step of convolutional models with strided 1x1 projections
    (ResNet-8 at widths whose projections have 4 and 6 input channels), VGG11 and the ConvNet,
    and their evaluation (channels-last on CPU), agree with the same computation in float64: the
    gradient within 1% in norm (rounding can flip a ReLU at a pre-activation of ~1e-6, which
    moves one element: 0.2% on VGG11 in channels-last; the AVX2 kernels' channels-last weight
    gradient was 250% off at two threads and crashed at one). On AVX2 kernels training keeps the
    default layout; on AVX-512 kernels it trains in channels-last."""
    r = subprocess.run([sys.executable, "-c", PROBE, str(threads)], env=_env(threads, isa),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-2000:]}"
    grad_err, eval_err, safe, layouts = r.stdout.strip().split(maxsplit=3)
    assert float(grad_err) < 1e-2, grad_err
    assert float(eval_err) < 1e-5, eval_err
    assert safe == ("False" if isa == "AVX2" else "True")
    assert layouts == ("[False]" if isa == "AVX2" else "[True]")


LAYOUTS = textwrap.dedent("""
    import torch
    from modeconn import train
    from modeconn.paths.curves import fit_curve
    from modeconn.models import model_config
    from modeconn.train import TrainConfig, init_model

    cfg = model_config("resnet8", (1, 8, 8), 10, width=0.25)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    model = init_model(cfg, 0)
    stepper = train.Stepper(model, train.make_optimizer(model.parameters(), TrainConfig()), x, y, 8)
    stepper.step(torch.arange(8))
    a, b = init_model(cfg, 0).state_dict(), init_model(cfg, 1).state_dict()
    curve = fit_curve(init_model(cfg, 0), a, b, x, y, TrainConfig(epochs=1, batch_size=8))
    print(any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters()),
          curve.channels_last)
""")


@needs_avx2
def test_gradient_paths_keep_the_default_layout_on_avx2_kernels():
    """On AVX2 kernels Stepper and curve fitting leave the model, its inputs and the curve's
    kernels in the default (contiguous NCHW) layout."""
    r = subprocess.run([sys.executable, "-c", LAYOUTS], env=_env(1), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "False"]


@pytest.mark.skipif(not NATIVE_AVX512, reason="needs AVX-512")
def test_gradient_paths_train_in_channels_last_on_avx512_kernels():
    r = subprocess.run([sys.executable, "-c", LAYOUTS], env=_env(1, None), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("name", ["resnet8", "vgg11"])
def test_stepper_in_either_layout_takes_the_steps_of_the_default_layout(name):
    """Whatever layout this machine's policy picks, the steps are those of the model in its
    default layout (to rounding)."""
    import torch.nn.functional as F

    cfg = model_config(name, (3, 8, 8), 10, width=0.25)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8, generator=g), torch.arange(64) % 10
    model, ref = init_model(cfg, 0), init_model(cfg, 0)
    tc = TrainConfig(lr=0.05)
    stepper = train.Stepper(model, train.make_optimizer(model.parameters(), tc), x, y, 32)
    opt = train.make_optimizer(ref.parameters(), tc)
    for idx in (torch.arange(32), torch.arange(32, 64)):
        loss = stepper.step(idx)
        ref_loss = F.cross_entropy(ref(x[idx]), y[idx])
        opt.zero_grad()
        ref_loss.backward()
        opt.step()
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-5, atol=1e-6)
    for (k, p), q in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=k)
