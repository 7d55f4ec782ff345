"""Command line: `python -m explorer train|data ...`.

Errors print one line on stderr and exit non-zero; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


class ProgressLine:
    """One self-overwriting progress line on stderr (a plain line per update when not a terminal)."""

    def __init__(self, label: str, stream=None):
        self.label, self.stream, self.t0, self.last = label, stream or sys.stderr, time.perf_counter(), -1.0

    def __call__(self, fraction: float, message: str) -> None:
        tty = self.stream.isatty()
        if not tty and fraction - self.last < 0.1 and fraction < 1.0:
            return
        self.last = fraction
        elapsed = time.perf_counter() - self.t0
        line = f"{self.label}: {100 * fraction:5.1f}% {message} [{elapsed:.0f}s]"
        self.stream.write(("\r" + line) if tty else line + "\n")
        if tty and fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m explorer", description="Compression trade-off explorer")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a baseline and write models/<model>-<dataset>.safetensors + card")
    t.add_argument("--model", required=True)
    t.add_argument("--dataset", default="digits")
    t.add_argument("--root", default=None, help="local dataset folder (all but digits)")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--augment-shift", type=int, default=0)
    t.add_argument("--width", type=float, default=None, help="channel width multiplier (where the model has one)")
    t.add_argument("--image-size", type=int, default=None)
    t.add_argument("--models-dir", default=None)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    e = dsub.add_parser("export", help="write the exact preprocessed tensors the explorer evaluates on")
    e.add_argument("--dataset", default="digits")
    e.add_argument("--root", default=None)
    e.add_argument("--split", default="test")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--image-size", type=int, default=None)
    e.add_argument("--out", required=True)
    return p


@command("train")
def _train(a: argparse.Namespace) -> int:
    from explorer.baselines import MODELS_DIR, train_baseline
    from explorer.train import TrainConfig

    cfg = TrainConfig(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, weight_decay=a.weight_decay, seed=a.seed,
                      augment_shift=a.augment_shift)
    kw = {} if a.width is None else {"width": a.width}
    card = train_baseline(a.model, a.dataset, root=a.root, cfg=cfg, model_kwargs=kw, image_size=a.image_size,
                          models_dir=a.models_dir or MODELS_DIR, progress=ProgressLine(f"train {a.model}"))
    print(json.dumps({k: card[k] for k in ("name", "accuracy", "params", "file_bytes")}, indent=2))
    return 0


@command("data")
def _data(a: argparse.Namespace) -> int:
    import numpy as np

    from explorer.data import export_split, load_dataset

    bundle = load_dataset(a.dataset, a.root, seed=a.seed, image_size=a.image_size)
    arrays = export_split(bundle, a.split)
    np.savez(a.out, **arrays)
    print(f"wrote {a.out}: x {arrays['x'].shape} float32, y {arrays['y'].shape} int64", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; the traceback only on request
        if args.debug:
            raise
        kind = "" if isinstance(e, ValueError) else f"{type(e).__name__}: "
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {kind}{msg}", file=sys.stderr)
        return 2
