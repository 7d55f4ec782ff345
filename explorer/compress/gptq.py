"""GPTQ: error-compensating rounding of a layer's weights (Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023; built on Frantar & Alistarh,
"Optimal Brain Compression", NeurIPS 2022).

Round-to-nearest rounds every weight on its own. GPTQ rounds a layer's input columns one after another and, after
each, moves the weights of the columns not yet rounded so that the layer's output on the calibration inputs X moves
as little as possible: with H = 2 X X^T (the Hessian of ||W X - Q X||^2 in each row) and H^-1 restricted to the
columns still free, rounding column j by e = w_j - q_j is compensated by w_F -= e / [H^-1]_jj * [H^-1]_{j,F}
(the Optimal Brain Surgeon step). The paper's practical form, used here:
  - every row shares the column order, so the update is one outer product per column;
  - the rows of the upper Cholesky factor U of H^-1 (H^-1 = U^T U) are exactly the eliminated inverses the
    OBS step needs, so H^-1 is never updated column by column;
  - updates are lazy: columns go in blocks of 128, the block's own columns updated at once, the rest of the matrix
    once per block from the block's accumulated errors;
  - dampening adds `damp` times the mean of H's diagonal to the diagonal, so a Hessian from few images inverts;
  - activation order rounds the columns by decreasing H_jj first (the inputs that carry the most energy), while
    their errors still have the most columns left to absorb them.
The grid is the caller's (the same scales and zero points round-to-nearest uses, so the codes are stored and
exported exactly as its are); a weight a pruning mask removed stays zero and its removal is compensated too.

The maths is on plain tensors (`gptq_codes`, `layer_hessian`); `Rounder` is the surgery: it rounds one layer of a
model at a time, from the inputs the layers rounded before it produce (the paper's sequential order).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 128  # columns per lazy batch (the paper's); it changes floating-point order only, never the algorithm
BATCH = 256  # calibration images per forward pass while a layer's Hessian is gathered


def gptq_codes(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int, *,
               damp: float = 0.01, act_order: bool = True, keep: torch.Tensor | None = None,
               block: int = BLOCK) -> torch.Tensor:
    """Integer codes (int64, w's shape) of a 2-D weight (rows, columns) rounded by GPTQ onto the grid whose value at
    code q is (q - zero) * scale; `scale` and `zero` broadcast to w's shape (a value per row, per row and group of
    columns, or one), `h` is the columns' Hessian (columns x columns). `keep` False marks weights that must stay
    zero (a pruning mask). A column whose input was zero on every calibration image (H_jj = 0) has nothing to
    compensate with: it is rounded to nearest, since the input may not be zero on other images.

    Computed in float64: a column's error is divided by a pivot of the Cholesky factor, and float32 pivots of a
    badly conditioned Hessian round codes differently from one machine's BLAS to another's."""
    if w.dim() != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"GPTQ takes a 2-D weight and its columns' Hessian; got {tuple(w.shape)} and {tuple(h.shape)}")
    rows, cols = w.shape
    f64 = torch.float64
    W = w.detach().to(f64).clone()
    H = h.detach().to(f64).clone()
    S, Z = scale.to(f64).expand(rows, cols), zero.to(f64).expand(rows, cols)
    K = keep.expand(rows, cols) if keep is not None else None
    d = torch.diagonal(H)
    d[d == 0] = 1.0  # a dead input: its column keeps its rounding to nearest (no off-diagonal terms to move)
    if act_order:
        perm = torch.argsort(d, descending=True, stable=True)
        W, H, S, Z = W[:, perm], H[perm][:, perm], S[:, perm], Z[:, perm]
        K = K[:, perm] if K is not None else None
    d = torch.diagonal(H)
    d += damp * d.mean()
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError("GPTQ cannot invert the Hessian of this layer's inputs (are the calibration images finite?); "
                         "a larger dampening may help") from None
    codes = torch.empty(rows, cols, dtype=f64)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, U1 = W[:, i1:i2], U[i1:i2, i1:i2]  # views: W1's updates land in W
        E1 = torch.zeros(rows, i2 - i1, dtype=f64)
        for i in range(i2 - i1):
            j = i1 + i
            col = W1[:, i]
            q = torch.clamp(torch.round(col / S[:, j]) + Z[:, j], qmin, qmax)
            if K is not None:
                q = torch.where(K[:, j], q, Z[:, j])  # the zero point's code is exactly 0
            codes[:, j] = q
            err = (col - (q - Z[:, j]) * S[:, j]) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    if act_order:
        codes = codes[:, torch.argsort(perm)]
    return codes.to(torch.int64)


# ---------------------------------------------------------------- a layer's inputs


def layer_columns(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as columns of its weight rows: (groups, row inputs, samples). A Linear layer's input is
    one sample per token; a convolution's is one per output position, unfolded to in_channels/groups * kh * kw
    values (the order of weight.flatten(1)), for each group of its channels."""
    if isinstance(layer, nn.Linear):
        return x.detach().reshape(-1, layer.in_features).t().unsqueeze(0)
    if isinstance(layer.padding, str):
        raise ValueError(f"GPTQ takes convolutions with numeric padding, not padding={layer.padding!r}")
    cols = F.unfold(x.detach(), layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                    stride=layer.stride)  # (n, C * kh * kw, positions), channel-major as the weight
    g = layer.groups
    cols = cols.reshape(x.shape[0], g, -1, cols.shape[-1])  # (n, groups, C/groups * kh * kw, positions)
    return cols.permute(1, 2, 0, 3).reshape(g, cols.shape[2], -1)


def weight_rows(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """The weight as (groups, rows of a group, row inputs): each output channel a row, grouped as its inputs."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    g = layer.groups if isinstance(layer, nn.Conv2d) else 1
    return w.reshape(g, w.shape[0] // g, w.shape[1])


class _Stop(Exception):
    """Raised by the hook once a layer's input is seen: the rest of the forward pass is not needed."""


@torch.no_grad()
def layer_hessian(model: nn.Module, layer: nn.Conv2d | nn.Linear, x: torch.Tensor,
                  batch: int = BATCH) -> torch.Tensor:
    """H = 2/n X X^T of the layer's inputs X (n samples) while the model runs on x as it now is (earlier layers
    already rounded, activation quantisers in place): (groups, row inputs, row inputs), float64."""
    total: torch.Tensor | None = None
    n = 0

    def grab(mod: nn.Module, args: tuple[Any, ...]) -> None:
        nonlocal total, n
        c = layer_columns(layer, args[0]).float()
        part = torch.bmm(c, c.transpose(1, 2)).double()  # float32 products, summed in float64 per batch
        total = part if total is None else total + part
        n += c.shape[2]
        raise _Stop

    handle = layer.register_forward_pre_hook(grab)  # after any activation quantiser: the input as the layer sees it
    try:
        for i in range(0, len(x), batch):
            try:
                model(x[i:i + batch])
            except _Stop:
                pass
    finally:
        handle.remove()
    if total is None:
        raise ValueError("GPTQ saw no input reach this layer on the calibration images")
    return 2.0 * total / max(n, 1)


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """sum over rows of (w - q) H (w - q)^T: the squared output error ||W X - Q X||^2 of the calibration inputs, up
    to H's factor 2/n."""
    e = (w - q).double()
    return float(torch.einsum("ri,ij,rj->", e, h, e))


class Rounder:
    """Rounds one layer at a time with GPTQ, each from the inputs that the layers already rounded produce; the
    weights are written by the caller (explorer.compress.quantize.quantize_weights), which calls this in the
    layers' order. `report` gathers what the step's report says: seconds and how much output error was saved."""

    def __init__(self, model: nn.Module, x: torch.Tensor, damp: float, act_order: bool):
        self.model, self.x, self.damp, self.act_order = model, x, damp, act_order
        self.layers: list[dict[str, Any]] = []
        self.seconds = 0.0

    def __call__(self, name: str, grid: tuple[torch.Tensor, torch.Tensor], qmin: int, qmax: int,
                 keep: torch.Tensor | None) -> torch.Tensor:
        """The codes of weight `name` (the weight's shape) on the grid (scale, zero), each broadcast to the
        weight as (rows, row inputs)."""
        t0 = time.perf_counter()
        owner = name.rpartition(".")[0]
        layer = self.model.get_submodule(owner)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"GPTQ rounds Conv2d and Linear weights; {name} belongs to a {type(layer).__name__}")
        h = layer_hessian(self.model, layer, self.x)
        rows = weight_rows(layer)
        g, per = rows.shape[0], rows.shape[1]
        scale, zero = (t.expand(g * per, rows.shape[2]).reshape(g, per, -1) for t in grid)
        mask = keep.reshape(g, per, -1) if keep is not None else None
        codes = torch.stack([gptq_codes(rows[k], h[k], scale[k], zero[k], qmin, qmax, damp=self.damp,
                                        act_order=self.act_order, keep=None if mask is None else mask[k])
                             for k in range(g)])
        deq, near = (codes - zero) * scale, (torch.clamp(torch.round(rows / scale) + zero, qmin, qmax) - zero) * scale
        if mask is not None:
            near = near * mask
        err = [output_error(rows[k], deq[k], h[k]) for k in range(g)]
        err_near = [output_error(rows[k], near[k], h[k]) for k in range(g)]
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        self.layers.append({"layer": owner, "seconds": round(seconds, 3),
                            "output_error_vs_nearest": round(sum(err) / sum(err_near), 4) if sum(err_near) else 1.0})
        return codes.reshape(layer.weight.shape)

    def report(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "samples": len(self.x), "damp": self.damp,
                "act_order": self.act_order, "layers": self.layers}
