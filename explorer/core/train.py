"""Training, fine-tuning and evaluation on in-memory splits.

`fit` is the one training loop: baselines, fine-tuning after pruning, clustering, QAT and
distillation all go through it. Techniques keep their constraints in force through hooks
(`after_backward` to mask gradients, `after_step` to re-apply masks or tie weights), so a pruned
weight stays zero and a clustered layer keeps its centroids during fine-tuning.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.core import spawn
from explorer.core.data import Split
from explorer.core.errors import check_choice, check_range
from explorer.core.safepoint import safe_point

# fraction done in [0, 1] and a one-line status; the UI maps it to st.progress, the CLI to a line
Progress = Callable[[float, str], None]
# (model, inputs, logits, targets) -> loss; distillation replaces the plain cross-entropy
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    schedule: str = "cosine"
    seed: int = 0
    augment_shift: int = 0  # random translation in pixels (0 = none)

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 0, 10_000, integer=True)
        check_range("lr", self.lr, 1e-7, 10.0)
        check_range("batch_size", self.batch_size, 1, 65_536, integer=True)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        check_choice("schedule", self.schedule, ("cosine", "constant"))
        check_range("seed", self.seed, 0, 2**31 - 1, integer=True)
        check_range("augment_shift", self.augment_shift, 0, 8, integer=True)


class TrainHook:
    """Called by `fit` around each optimiser step; subclass and override what you need."""

    def after_backward(self, model: nn.Module) -> None:  # e.g. zero the gradients of pruned weights
        pass

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:  # e.g. re-apply masks
        pass


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_top1: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def compute_threads(n: int) -> None:
    """The torch threads this process computes with (EXPLORER_TRAIN_THREADS for runs): set, never set and put back,
    since the page's sessions compute in threads of one process and a run that ends would change the count under
    one still going. The one place besides `timing_threads` that sets torch's thread count."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@contextlib.contextmanager
def timing_threads(n: int) -> Iterator[None]:
    """Torch's thread count for one timed call (EXPLORER_THREADS), put back after it: a timing holds the quiet
    slot (explorer.run.scheduler), so no other work of ours computes meanwhile."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Random translation with zero (i.e. mean) padding: cheap augmentation for tiny images."""
    if max_shift == 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=g))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if dy > 0:
        x[:, :, :dy] = 0
    elif dy < 0:
        x[:, :, dy:] = 0
    if dx > 0:
        x[:, :, :, :dx] = 0
    elif dx < 0:
        x[:, :, :, dx:] = 0
    return x


def fit(
    model: nn.Module,
    train: Split,
    cfg: TrainConfig,
    *,
    val: Split | None = None,
    hooks: Sequence[TrainHook] = (),
    progress: Progress | None = None,
    loss_fn: LossFn | None = None,
    params: Sequence[nn.Parameter] | None = None,
) -> History:
    """Train `model` in place, deterministically for a given seed on the CPU."""
    g = seed_everything(cfg.seed)
    n = len(train)
    if n == 0:
        raise ValueError("training split is empty: nothing to train on")
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adam":
        opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(trainable, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(total, 1))))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    hist = History()
    t0 = time.perf_counter()
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        running, seen = 0.0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = _shift(train.x[idx].clone(), cfg.augment_shift, g)
            y = train.y[idx]
            logits = model(x)
            loss = loss_fn(model, x, logits, y) if loss_fn else F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise ValueError(f"training diverged: loss became {loss.item()} at epoch {epoch + 1}; "
                                 "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            for h in hooks:
                h.after_backward(model)
            opt.step()
            sched.step()
            step += 1
            for h in hooks:
                h.after_step(model, step, total)
            running += loss.item() * len(idx)
            seen += len(idx)
            if progress is not None and (b == steps_per_epoch - 1 or b % 10 == 0):
                progress(step / total, f"epoch {epoch + 1}/{cfg.epochs}, loss {running / seen:.4f}")
        hist.train_loss.append(running / seen)
        if val is not None and len(val):
            hist.val_top1.append(evaluate(model, val)["top1"])
    hist.seconds = time.perf_counter() - t0
    hist.steps = step
    model.eval()
    return hist


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512, workers: int = 1) -> torch.Tensor:
    """The model's logits on `x`, `batch_size` images at a time. With `workers` > 1 the batches are scored
    side by side in that many threads: each batch is the same slice through the same kernels with the same
    intra-op thread count as in one thread, so the logits are bit for bit the same whatever `workers` is;
    it only puts idle cores to work. The model's forward must not change the model (true of every model the
    explorer rebuilds; calibration hooks must use one worker)."""
    model.eval()
    starts = range(0, len(x), batch_size)
    outs: list[torch.Tensor] = []
    if workers <= 1 or len(starts) < 2:
        for i in starts:
            safe_point()  # a latency timing elsewhere may want the machine between two batches
            outs.append(model(x[i:i + batch_size]))
    else:
        def one(i: int) -> torch.Tensor:
            with torch.no_grad():  # grad mode is per thread
                out: torch.Tensor = model(x[i:i + batch_size])
                return out

        n = min(workers, len(starts))
        with spawn.scorers(n) as pool:
            for g in range(0, len(starts), n):  # `n` batches side by side, then a safe point in this thread
                safe_point()
                outs += pool.map(one, starts[g:g + n])
    return torch.cat(outs).float() if outs else torch.empty(0)


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, ks: Sequence[int] = (1, 3, 5)) -> dict[str, float]:
    """Percent of samples whose label is among the k largest logits (k capped at the class count)."""
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hit = (logits.topk(kk, dim=1).indices == y[:, None]).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


def scores(logits: torch.Tensor, y: torch.Tensor, with_predictions: bool = False) -> dict[str, Any]:
    """top-1/3/5 (percent), loss, the sample count, the counts of correct images behind top-1 and top-5
    (their intervals need counts), and with `with_predictions` the predicted label of every image."""
    res: dict[str, Any] = topk_accuracy(logits, y)
    res["loss"] = F.cross_entropy(logits, y).item()
    res["n"] = len(y)
    res["correct"] = {f"top{k}": int((logits.topk(min(k, logits.shape[1]), dim=1).indices == y[:, None]).any(1).sum())
                      for k in (1, 5)}
    if with_predictions:
        res["pred"] = logits.argmax(1)
    return res


def evaluate(model: nn.Module, split: Split, batch_size: int = 512, with_predictions: bool = False,
             workers: int = 1) -> dict[str, Any]:
    """top-1, top-3, top-5 accuracy (percent), mean cross-entropy loss, the sample count and the correct
    counts; the predictions too when asked (see `scores`); `workers` as in `predict_logits`."""
    if len(split) == 0:
        raise ValueError("evaluation split is empty")
    return scores(predict_logits(model, split.x, batch_size, workers), split.y, with_predictions)
