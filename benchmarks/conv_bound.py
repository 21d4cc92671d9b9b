"""What bounds ResNet-20 on this CPU: the convolution kernels alone, at the shapes of the
interpolation benchmark (1×28×28 inputs, evaluation batch 128, channels-last as the engine runs
them) and of training (batch 32 and 512, forward + backward), against the fp32 matmul peak, beside
the whole model's forward (and training step) at the same batch.

    python benchmarks/conv_bound.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from reference import matmul_peak, timed  # noqa: E402

from modeconn.evaluate import flops_per_sample, nhwc, prefers_channels_last  # noqa: E402
from modeconn.models import build_model, model_config  # noqa: E402


def best(fn, repeats: int = 5) -> float:
    """Best of `repeats` timed runs after one warm-up run."""
    fn()
    return timed(fn, repeats)


def conv_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Conv2d, torch.Size]]:
    found = []
    hooks = [m.register_forward_hook(lambda m, i, o: found.append((m, i[0].shape)))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return found


def main() -> None:
    peak = matmul_peak()
    print(f"matmul peak {peak:.0f} GFLOP/s, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    cfg = model_config("resnet20", (1, 28, 28), 10)
    for batch, train in ((128, False), (32, True), (512, True)):
        model = build_model(cfg)
        x = torch.randn(batch, 1, 28, 28)
        layout = prefers_channels_last(model, x, gradients=train)
        if layout:
            model = model.to(memory_format=torch.channels_last)
            x = nhwc(x)
        fl = flops_per_sample(model, x[:2]) * batch * (3 if train else 1)
        convs = conv_shapes(model, x)
        ins = [torch.randn(s).contiguous(memory_format=torch.channels_last if layout
                                         else torch.contiguous_format).requires_grad_(train)
               for _, s in convs]
        ws = [m.weight.detach().clone().requires_grad_(train) for m, _ in convs]
        conv_fl = sum(2 * m.weight[0].numel() * F.conv2d(i, w, None, m.stride, m.padding).numel()
                      for (m, _), i, w in zip(convs, ins, ws)) * (3 if train else 1)

        def convs_only():
            for (m, _), i, w in zip(convs, ins, ws):
                out = F.conv2d(i, w, None, m.stride, m.padding)
                if train:
                    out.backward(torch.ones_like(out))

        if train:
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            y = torch.randint(0, 10, (batch,))
            model.train()

            def whole():
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        else:
            model.eval()

            def whole():
                with torch.no_grad():
                    model(x)
        with torch.set_grad_enabled(train):
            t_conv = best(convs_only)
        t_all = best(whole)
        what = "training step" if train else "forward"
        print(f"batch {batch:3d} {what:<13} ({'channels-last' if layout else 'NCHW'}): "
              f"convolutions alone {conv_fl / t_conv / 1e9:5.0f} GFLOP/s "
              f"({100 * conv_fl / t_conv / 1e9 / peak:.0f}% of peak); whole model "
              f"{fl / t_all / 1e9:5.0f} GFLOP/s ({100 * fl / t_all / 1e9 / peak:.0f}%); "
              f"convolutions are {100 * t_conv / t_all:.0f}% of its time")


if __name__ == "__main__":
    main()
