"""The page's responsiveness, measured side by side in one run on this machine:

1. points in the curves three minutes after a page opens digits_cnn on an empty cache, with no click (the
   page's own run and its baseline through the run board, the landscape filling the rest);
2. per baseline, opening the model and then a cold slider move, until accuracy and size show (the run board's
   first partial result);
3. a warm slider move (a configuration in the cache): the page's own render time, from its footer;
4. how much slower a page's run is while the landscape runs, against the same kind of run with the
   landscape idle, alternating the two.

Run: .venv/bin/python bench/live.py   (writes docs/results/live.md)
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import common as C

from explorer.compress.prune import PruneConfig
from explorer.compress.recipe import Recipe

NAME = "live"
TARGETS = {"points": 20, "digits_s": 1.5, "first_s": 10.0, "warm_s": 0.3, "slowdown": 1.3}
OPEN_S = 180


def _fresh(tmp: Path, name: str) -> None:
    os.environ["EXPLORER_CACHE_DIR"] = str(tmp / name)


def _cards() -> dict:
    from explorer.app import service

    return {c["name"]: c for c in service.list_baselines()}


def points_after_opening(tmp: Path) -> tuple[int, list[tuple[int, int]]]:
    """A page opened on digits_cnn and left alone for OPEN_S seconds: how many runs the curves hold."""
    from explorer.app import service
    from explorer.run import runner
    from explorer.run.cache import RunCache
    from explorer.run.controls import DEFAULTS, build
    from explorer.run.jobs import COMPARISON, Board
    from explorer.run.landscape import Landscapes

    _fresh(tmp, "open")
    card = _cards()["digits_cnn-digits"]
    board = Board(RunCache, runner.run_key)
    lands = Landscapes(RunCache, runner.run_key, idle_s=600, tick_s=0.5)
    controls = {**DEFAULTS, "baseline": card["name"]}
    recipe = build(controls, card)
    board.submit(recipe, "page")
    board.submit(service.baseline_recipe(recipe), "page", COMPARISON)
    t0, timeline = time.monotonic(), []
    while time.monotonic() - t0 < OPEN_S:
        lands.touch(card, controls)  # the page's periodic refresh
        frame = service.frame(card["architecture"], card["dataset"])
        n = int((frame["status"] == "ok").sum()) if len(frame) else 0
        if not timeline or timeline[-1][1] != n:
            timeline.append((round(time.monotonic() - t0), n))
        time.sleep(1.0)
    board.stop()
    lands.pause(card["name"], True)
    return timeline[-1][1], timeline


def first_figures(tmp: Path) -> list[list[str]]:
    """Per baseline, in an empty cache: the page opening the model (its default configuration, the
    baseline's own scores not yet in memory), then a slider move to a configuration never computed
    (sparsity one notch of ten up): seconds until accuracy and size show, and until each run is complete."""
    from explorer.models.baselines import baseline_data
    from explorer.run import runner
    from explorer.run.cache import RunCache
    from explorer.run.controls import DEFAULTS, build
    from explorer.run.jobs import Board

    rows = []
    cards = _cards()
    for name in ("digits_cnn-digits", "vgg13-digits", "lenet5-fashion-mnist", "resnet8-fashion-mnist"):
        if name not in cards:
            continue
        _fresh(tmp, f"cold-{name}")
        runner._scores.clear()  # a process that has not scored this baseline yet
        card = cards[name]
        baseline_data(card)  # in memory already in a page's process once the model is open
        board = Board(RunCache, runner.run_key)
        jobs = []
        for sparsity in (DEFAULTS["sparsity"], DEFAULTS["sparsity"] + 0.1):
            recipe = build({**DEFAULTS, "baseline": name, "sparsity": sparsity}, card)
            job = board.submit(recipe, "page")
            while not job.finished:
                time.sleep(0.05)
            jobs.append((recipe, job))
        board.stop()
        target = TARGETS["digits_s"] if name.startswith("digits_cnn") else TARGETS["first_s"]
        firsts = [j.first_figures_s for _, j in jobs]
        ok = all(f is not None and f < target for f in firsts)
        rows.append([name, " / ".join(r.label() for r, _ in jobs),
                     f"{jobs[0][1].result['finetune_samples']:,}" if jobs[0][1].result else "",
                     *(C.secs(f) for f in firsts), " / ".join(C.secs(j.total_s) for _, j in jobs),
                     f"< {target:g}", "yes" if ok else "no"])
    return rows


def warm_render(tmp: Path) -> list[float]:
    """The page's script time for a configuration in the cache, from its own footer (AppTest drives it)."""
    from streamlit.testing.v1 import AppTest

    _fresh(tmp, "warm")
    at = AppTest.from_file(str(C.ROOT / "app.py"), default_timeout=300)
    at.query_params["baseline"] = "digits_cnn-digits"
    at.run()
    deadline = time.monotonic() + 300
    while any(x.value.startswith("Computing") for x in at.info) and time.monotonic() < deadline:
        time.sleep(0.3)
        at.run()
    times = []
    for _ in range(7):
        at.run()
        m = re.match(r"Rendered in ([0-9.]+) s", at.caption[-1].value)
        times.append(float(m.group(1)))
    return times


def slowdown(tmp: Path, rounds: int = 3, baseline: str = "vgg13-digits",
             epochs: int = 1) -> tuple[list[float], list[float]]:
    """A page's cold run of `baseline` (one-shot pruning, `epochs` of fine-tuning) with the landscape busy and
    idle, alternating; distinct recipes of equal cost."""
    from explorer.run import runner
    from explorer.run.cache import RunCache
    from explorer.run.controls import DEFAULTS
    from explorer.run.jobs import Board
    from explorer.run.landscape import Landscapes

    _fresh(tmp, "slowdown")
    card = _cards()[baseline]
    board = Board(RunCache, runner.run_key)
    lands = Landscapes(RunCache, runner.run_key, idle_s=3600, tick_s=0.3)
    alone, beside = [], []
    stop = threading.Event()

    def keep_open():
        while not stop.is_set():
            lands.touch(card, {**DEFAULTS, "baseline": card["name"], "sparsity": 0.0})
            time.sleep(0.5)

    threading.Thread(target=keep_open, daemon=True).start()
    for i in range(rounds):
        for busy, out in ((True, beside), (False, alone)):
            lands.pause(card["name"], not busy)
            time.sleep(3 if busy else 8)  # the worker busy on a grid point, or done with its last one
            r = Recipe(model=card["architecture"], dataset=card["dataset"],
                       steps=(PruneConfig(sparsity=0.31 + 0.01 * (2 * i + busy), finetune_epochs=epochs),))
            job = board.submit(r, "page")
            while not job.finished:
                time.sleep(0.05)
            out.append(job.total_s)
    stop.set()
    board.stop()
    lands.pause(card["name"], True)
    lands.stop()
    return alone, beside


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="explorer-live-"))
    checks = []
    n, timeline = points_after_opening(tmp)
    checks.append(C.Check(f"at least {TARGETS['points']} points in the curves {OPEN_S / 60:g} minutes after opening "
                          "digits_cnn on an empty cache, no click", n >= TARGETS["points"], f"{n} points"))
    cold = first_figures(tmp)
    for row in cold:
        checks.append(C.Check(f"{row[0]}: opening the model and a cold slider move show accuracy and size in "
                              f"{row[6]} s", row[7] == "yes", f"{row[3]} s and {row[4]} s"))
    warm = warm_render(tmp)
    med = statistics.median(warm)
    checks.append(C.Check(f"a warm slider move renders in under {TARGETS['warm_s']} s", med < TARGETS["warm_s"],
                          f"median {med:.3f} s of {len(warm)}"))
    alone, beside = slowdown(tmp)
    ratio = statistics.median(beside) / statistics.median(alone)
    checks.append(C.Check(f"a page's run is at most {TARGETS['slowdown']}x slower with the landscape running",
                          ratio <= TARGETS["slowdown"], f"{ratio:.2f}x (medians {statistics.median(beside):.1f} s "
                                                        f"and {statistics.median(alone):.1f} s)"))
    parts = [
        "The page computes runs off its script (a run board in the server process, one run at a time) and "
        "shows accuracy and size as soon as they exist; a background landscape measures the open model's "
        "default grid (40 configurations) in a low-priority worker process that waits whenever a page's own "
        "run is going. Measured on this machine in one run of this script:",
        "### The curves fill in on their own",
        f"A page opened on digits_cnn with an empty cache, left alone for {OPEN_S} s: the number of runs the "
        "curves and Pareto charts hold, over time: " + ", ".join(f"{t} s: {k}" for t, k in timeline) + ".",
        "### A cold slider move",
        "Each baseline in an empty cache, in a process that has not scored the baseline yet (the data set "
        "already in memory, as in a page's process once the model is open): the page opening the model on its "
        "default configuration, then a slider move to a configuration never computed (sparsity up one notch "
        "of ten). Seconds until accuracy and size show, and until each run is complete (ONNX export, int8 and "
        "latency included). A model's first run scores the baseline on the second core while it fine-tunes on "
        "the first, and every run scores its rebuilt model on both cores while the landscape waits; each test "
        "batch is computed as in one thread, so the figures are the same as in one thread.",
        C.table(["baseline", "opening / slider move", "fine-tuning images", "opening: accuracy and size after s",
                 "slider move: accuracy and size after s", "complete after s", "target s", "meets"],
                cold, "llrrrrrl"),
        "### A warm slider move",
        "The page's own render time for a configuration in the cache, from its footer: "
        + ", ".join(f"{t:.3f}" for t in warm) + " s.",
        "### The foreground comes first",
        f"vgg13, one-shot pruning with one fine-tuning epoch, cold each time, alternating the landscape busy "
        f"(a worker on a grid point) and idle: {', '.join(f'{t:.1f}' for t in beside)} s beside it, "
        f"{', '.join(f'{t:.1f}' for t in alone)} s alone; ratio of medians {ratio:.2f}.",
        "### Claims", C.checks_table(checks), C.summary_line(checks)]
    C.write_section(NAME, "A page that never blocks: the landscape, streamed figures, the foreground first",
                    "\n\n".join(parts), checks=checks,
                    facts={"points": n, "warm_s": round(med, 3), "slowdown": round(ratio, 2),
                           "first_s": {r[0]: r[3] for r in cold}, "move_first_s": {r[0]: r[4] for r in cold}})


if __name__ == "__main__":
    main()
