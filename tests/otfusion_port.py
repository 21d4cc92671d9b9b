"""sidak/otfusion's weight-mode fusion (`wasserstein_ensemble.py`:
`get_wassersteinized_layers_modularized`, with `ground_metric.py`'s GroundMetric), ported for the
tests and benchmarks/ot_reference.py: learnt from its code, written anew, in the dtype given."""

from __future__ import annotations

import numpy as np
import ot
import torch


def _ground_metric(x: torch.Tensor, y: torch.Tensor, squared: bool, normalize: str
                   ) -> torch.Tensor:
    """GroundMetric.process for 'euclidean' (its default `_cost_matrix_xy`), no clipping."""
    c = ((x[:, None, :] - y[None, :, :]).abs() ** 2).sum(2)
    if not squared:
        c = c ** 0.5
    if normalize == "log":
        return torch.log1p(c)
    stat = {"max": torch.max, "median": torch.median, "mean": torch.mean}.get(normalize)
    return c if stat is None else c / stat(c)


def _importance(w: torch.Tensor, kind: str, eps: float = 1e-9) -> np.ndarray:
    """`_get_neuron_importance_histogram`: the L1 (L2) norm of each row, + eps, normalised."""
    rows = w.reshape(w.shape[0], -1).numpy()
    h = np.linalg.norm(rows, ord=1 if kind == "l1" else 2, axis=-1).astype(np.float64) + eps
    return h / h.sum()


def reference_fusion(wa: list[torch.Tensor], wb: list[torch.Tensor], *, exact: bool = True,
                     reg: float = 0.01, squared: bool = True, normalize: str = "log",
                     importance: str | None = None, step: float = 0.5, eps: float = 0.0,
                     proper_marginals: bool = False, skip_last_layer: bool = True
                     ) -> tuple[list[torch.Tensor], list]:
    """The reference's weight-mode fusion of two bias-free networks, one weight per layer, with
    --correction --past-correction (and --proper-marginals as given; it asserts it with
    importance). `eps` is its 1e-7 in the correction's 1/(β + eps) (0 here: exactly the barycentric
    map). Returns the fused weights and the plans."""
    fused, plans, t_var = [], [], None
    last = len(wa) - 1
    for idx, (w0, w1) in enumerate(zip(wa, wb)):
        conv = w0.dim() > 2
        d0 = w0.reshape(w0.shape[0], w0.shape[1], -1) if conv else w0
        d1 = w1.reshape(w1.shape[0], w1.shape[1], -1) if conv else w1
        if idx == 0:
            aligned = d0
        elif conv:
            aligned = torch.bmm(d0.permute(2, 0, 1),
                                t_var.unsqueeze(0).repeat(d0.shape[2], 1, 1)).permute(1, 2, 0)
        elif w0.shape[1] != t_var.shape[0]:  # a linear layer after a flattened conv
            unflat = w0.reshape(w0.shape[0], t_var.shape[0], -1).permute(2, 0, 1)
            aligned = torch.bmm(unflat, t_var.unsqueeze(0).repeat(unflat.shape[0], 1, 1))
            aligned = aligned.permute(1, 2, 0).reshape(w0.shape[0], -1)
        else:
            aligned = w0 @ t_var
        n0, n1 = d0.shape[0], d1.shape[0]
        if idx == last and skip_last_layer:
            fused.append((1 - step) * aligned.reshape(w0.shape) + step * w1)
            break
        m = _ground_metric(aligned.reshape(n0, -1), d1.reshape(n1, -1), squared, normalize)
        if importance is None or idx == last:
            mu, nu = np.ones(n0) / n0, np.ones(n1) / n1
        else:  # its active line: the unaligned weights
            mu, nu = _importance(d0, importance), _importance(d1, importance)
        t = ot.emd(mu, nu, m.numpy()) if exact else ot.bregman.sinkhorn(mu, nu, m.numpy(), reg)
        plans.append(torch.from_numpy(np.asarray(t, dtype=np.float64)))
        t = plans[-1].to(w0.dtype)  # as it runs: T in the weights' precision (.float())
        if not proper_marginals:  # --correction without --proper-marginals
            t_var = t @ torch.diag(1.0 / (torch.ones(n0, dtype=t.dtype) / n0 + eps))
        else:
            t_var = t * (1 / (t.T @ torch.ones(n0, dtype=t.dtype) + eps))
        moved = t_var.T @ aligned.reshape(n0, -1)  # --past-correction
        fused.append(((1 - step) * moved + step * d1.reshape(n1, -1)).reshape(w1.shape))
    return fused, plans
