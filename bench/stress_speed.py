"""Speed figures under stress (issue 22's targets), measured side by side in one run on this machine:

1. openings of digits_cnn and of the default model (LeNet-5 on Fashion-MNIST) on an empty cache, as a page
   opens them (its run on the run board, the baseline as the comparison), with the model's landscape measuring
   beside it and a sweep of 8 recipes running in another process through the same cache; half of the openings
   also have two more sessions moving a slider (their runs on the same board);
2. every speed-up those openings show as a number (the two tiles: PyTorch fp32 and ONNX Runtime int8, batch of
   256) against a quiet re-measurement of the same stored files (runner.time_run, with none of our other work
   running): within 20%, or shown as disturbed; a re-measurement that is itself disturbed cannot judge;
3. the share of figures the quiet re-measurements show as disturbed (no work of ours beside them), on an idle
   machine: figures whose timing lost more than 1% of its time to other virtual machines on the host (the
   hypervisor's "steal" count in /proc/stat) are counted apart, and the share over all of them is given beside;
4. the baseline against itself, and whether any stored speed-up is against another engine than its own;
5. a page's run with the landscape running against the same kind of run with it idle, alternating.

The issue asks for 20 openings; BENCH_OPENINGS (default 2 per model and variant, 8 in all) keeps the script near
15 minutes on a 2-core machine. The machine may be shared with other people's work: the load average is
sampled every second and reported, and that load is the "external load" these figures were taken under.

Run: .venv/bin/python bench/stress_speed.py   (writes docs/results/stress_speed.md)
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common as C
import live

from explorer.core.engines import B256, ORT_CPU_INT8, TORCH_CPU

NAME = "stress_speed"
OPENINGS = int(os.environ.get("BENCH_OPENINGS", "2"))  # per model and variant
SLOWDOWN_ROUNDS = int(os.environ.get("BENCH_SLOWDOWN_ROUNDS", "2"))
MODELS = ("digits_cnn-digits", "lenet5-fashion-mnist")
TILES = (TORCH_CPU, ORT_CPU_INT8)
TOLERANCE, IDLE_SHARE, SLOWDOWN = 0.20, 0.05, 1.3
STOLEN_IDLE = 0.01  # a machine is idle for a figure when the hypervisor took at most this share of its timing
OPEN_TIMEOUT_S = 900
_load: list[float] = []


def _fresh(tmp: Path, name: str) -> Path:
    path = tmp / name
    os.environ["EXPLORER_CACHE_DIR"] = str(path)
    return path


def _cards() -> dict:
    from explorer.app import service

    return {c["name"]: c for c in service.list_baselines()}


def _sample_load(stop: threading.Event) -> None:
    while not stop.is_set():
        _load.append(os.getloadavg()[0])
        stop.wait(1.0)


def _sweep(card: dict, cache: Path, out: Path) -> subprocess.Popen:
    """A sweep of 8 recipes in another process, through the same cache (one worker: the CLI's own pool)."""
    env = dict(os.environ, EXPLORER_CACHE_DIR=str(cache))
    cmd = [sys.executable, "-m", "explorer", "sweep", "--model", card["architecture"], "--dataset", card["dataset"],
           "--sparsity", "0.15,0.35,0.55,0.8", "--bits", "32,8", "--clusters", "0", "--finetune-epochs", "1",
           "--workers", "1", "--out", str(out)]
    return subprocess.Popen(cmd, cwd=C.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the sweep and its workers, nothing else
        proc.wait()


def opening(tmp: Path, name: str, i: int, sliders: bool) -> dict:
    """One page opening `name` on an empty cache with the landscape and a sweep beside it (and, with `sliders`,
    two more sessions each moving a slider): the runs the sessions show, and the cache they are in."""
    from explorer.app import service
    from explorer.run import runner
    from explorer.run.cache import RunCache
    from explorer.run.controls import DEFAULTS, build
    from explorer.run.jobs import COMPARISON, Board
    from explorer.run.landscape import Landscapes

    cache = _fresh(tmp, f"{name}-{'sliders' if sliders else 'open'}-{i}")
    runner._scores.clear()  # a server that has not scored this baseline yet
    card = _cards()[name]
    controls = {**DEFAULTS, "baseline": name}
    recipe = build(controls, card)
    RunCache()  # the folder, claimed as the explorer's before two processes race to make it
    sweep = _sweep(card, cache, tmp / f"sweep-{name}-{i}-{sliders}.csv")
    board = Board(RunCache, runner.run_key)
    lands = Landscapes(RunCache, runner.run_key, idle_s=600, tick_s=0.5)
    stop = threading.Event()

    def keep_open() -> None:
        while not stop.is_set():
            lands.touch(card, controls)
            stop.wait(0.5)

    threading.Thread(target=keep_open, daemon=True).start()
    t0 = time.perf_counter()
    load0 = len(_load)
    jobs = [("page", board.submit(recipe, "page"))]
    board.submit(service.baseline_recipe(recipe), "page", COMPARISON)
    if sliders:
        for s, sparsity in (("slider-1", 0.6), ("slider-2", 0.7)):
            jobs.append((s, board.submit(build({**controls, "sparsity": sparsity}, card), s)))
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    while not all(j.finished for _, j in jobs) and time.monotonic() < deadline:
        time.sleep(0.2)
    elapsed = time.perf_counter() - t0
    stop.set()
    sweep_done = sweep.poll() is not None
    _stop(sweep)
    board.stop()
    lands.pause(name, True)
    lands.stop()
    load = _load[load0:] or [os.getloadavg()[0]]
    runs = [(s, j.result) for s, j in jobs if j.state == "done" and j.result and j.result.get("status") == "ok"]
    C.log(f"  opening {name} #{i} sliders={sliders}: {elapsed:.0f} s, {len(runs)} runs, load "
          f"{min(load):.1f}-{max(load):.1f}")
    return {"model": name, "sliders": sliders, "seconds": elapsed, "runs": runs, "cache": cache,
            "load": load, "sweep_finished": sweep_done, "baseline_key": runner.run_key(service.baseline_recipe(recipe))}


def quiet(cache: Path, keys: list[str]) -> list[dict]:
    """The same stored files timed again with none of our other work running (runner.time_run), in a fresh
    process: this one has run eight openings (their threads, sessions and memory), a server has not."""
    out = subprocess.run([sys.executable, __file__, "--quiet", str(cache), *keys], cwd=C.ROOT, check=True,
                         env=dict(os.environ, EXPLORER_CACHE_DIR=str(cache)), capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _quiet_main(keys: list[str]) -> None:
    from explorer.run import runner
    from explorer.run.cache import RunCache

    cache = RunCache()
    print(json.dumps([runner.time_run(cache.get(k), cache.root / k) for k in keys]))


def _sessions(results) -> dict:
    """Rounds kept and the CPU share of every round's timed calls, over the timing sessions of `results`."""
    shares, kept, wanted, sessions, others = [], 0, 0, 0, []
    for r in results:
        for s in (r.get("timing_quality") or {}).get("sessions") or []:
            sessions += 1
            if s.get("others_busy") is not None:
                others.append(s["others_busy"])
            shares += s.get("cpu_share") or []
            kept, wanted = kept + s.get("rounds_kept", 0), wanted + s.get("rounds_wanted", 0)
    return {"sessions": sessions, "kept": kept, "wanted": wanted, "shares": shares, "others": others}


def _sessions_words(what: str, s: dict) -> str:
    if not s["shares"]:
        return f"{what}: no timing session recorded."
    q = statistics.quantiles(s["shares"], n=4) if len(s["shares"]) > 1 else s["shares"] * 3
    return (f"{what}: {s['sessions']} timing sessions kept {s['kept']} of the {s['wanted']} rounds they wanted; the "
            f"timing thread had the CPU for {min(s['shares']):.0%} to {max(s['shares']):.0%} of its timed calls' wall "
            f"time (median {statistics.median(s['shares']):.0%}, quartiles {q[0]:.0%} and {q[2]:.0%}; a round needs "
            "90%)." + (f" Other work kept the other cores busy for {statistics.median(s['others']):.0%} of the timing "
                       f"rounds' time (median; up to {max(s['others']):.0%})." if s.get("others") else ""))


def _stolen(result: dict, batch: str, index: int | None) -> float | None:
    """The largest share of time the hypervisor gave other virtual machines in the timing sessions a figure's rounds
    come from (its batch's sessions up to the one that settled it; None where the system does not say)."""
    sessions = (result.get("timing_quality") or {}).get("sessions") or []
    shares = [s.get("stolen") for s in sessions[: (index if index is not None else len(sessions) - 1) + 1]
              if s.get("batch") == batch]
    return None if not shares or None in shares else max(shares)


def _quiet_note(n: dict) -> str:
    """Which checks the figures re-measured with none of our work running failed (a figure can fail several)."""
    failed = n.get("quiet_failed") or {}
    waived = (f"{n['quiet_waived']} figures had a baseline slower than its reference with nothing else running on "
              "the other cores (the machine's own speed: the check passes them)" if n.get("quiet_waived") else "")
    if not failed:
        return waived
    from explorer.measure.timing_checks import CHECKS  # the checks' own words, as the page says them

    words = "not met: " + "; ".join(f"{CHECKS.get(k, k)} ({v})" for k, v in sorted(failed.items(),
                                                                                  key=lambda kv: -kv[1]))
    devs = n.get("quiet_reference_deviations") or []
    if devs:
        faster = sum(d < 0 for d in devs)
        words += (f". Where the reference check failed, the baseline's quiet time was faster than its reference "
                  f"in {faster} and slower in {len(devs) - faster} of {len(devs)} speed-ups (from {devs[0]:+.0%} to "
                  f"{devs[-1]:+.0%})")
    return words + (f". {waived}" if waived else "")


def compare(openings: list[dict]) -> tuple[list[list[str]], dict]:
    """Every speed-up the openings showed as a number against the quiet re-measurement of the same files."""
    from explorer.run.result import speed

    rows, quiet_results = [], []
    n = {"shown": 0, "disturbed_shown": 0, "agree": 0, "wrong": 0, "unjudged": 0, "quiet_figures": 0,
         "quiet_disturbed": 0, "quiet_waived": 0, "idle_figures": 0, "idle_disturbed": 0, "quiet_stolen": []}
    failed: collections.Counter[str] = collections.Counter()  # the checks the quiet disturbed figures failed
    ref_devs: list[float] = []  # how far the baseline's quiet time was from its reference, where that failed
    for o in openings:
        os.environ["EXPLORER_CACHE_DIR"] = str(o["cache"])
        agains = quiet(o["cache"], [r["key"] for _, r in o["runs"]])
        for (session, r), again in zip(o["runs"], agains, strict=True):
            quiet_results.append(again)
            q_load = (again.get("timing_quality") or {}).get("load_average", {}).get("before") or [None]
            for kind in ("speedup", "deployment_gain"):
                for engine, per in (again.get(kind) or {}).items():
                    for b in per:
                        n["quiet_figures"] += 1
                        figure = ((again.get("timing_quality") or {}).get("figures", {}).get(kind, {})
                                  .get(engine, {}).get(b, {}))
                        n["quiet_waived"] += bool(figure.get("reference_waived"))
                        stolen = _stolen(again, b, figure.get("session"))
                        n["quiet_stolen"].append(stolen)
                        idle = stolen is None or stolen <= STOLEN_IDLE
                        n["idle_figures"] += idle
                        if speed(again, engine, b, kind).state == "disturbed":
                            n["quiet_disturbed"] += 1
                            n["idle_disturbed"] += idle
                            failed.update(figure.get("failed") or ["(no check recorded)"])
                            sessions = (again.get("timing_quality") or {}).get("sessions") or []
                            sess = sessions[figure["session"]] if figure.get("session") is not None else {}
                            C.log(f"  quiet disturbed: {o['model']} {kind} {engine} {b}: {figure.get('failed')} "
                                  f"ratio {figure.get('ratio')} ({figure.get('ci')}), baseline "
                                  f"{figure.get('baseline_in_round_ms')} ms against reference "
                                  f"{figure.get('baseline_reference_ms')} ms, attempt {sess.get('attempt')}, other "
                                  f"work on the other cores {sess.get('others_busy')}, stolen by the hypervisor "
                                  f"{stolen}")
                            if "reference" in (figure.get("failed") or []) and kind == "speedup":
                                ref_devs.append(figure.get("reference_deviation"))
            for engine in TILES:
                shown, q = speed(r, engine, B256), speed(again, engine, B256)
                if not shown.shown:
                    n["disturbed_shown"] += shown.state == "disturbed"
                    verdict = "shown as disturbed" if shown.state == "disturbed" else shown.state
                else:
                    n["shown"] += 1
                    if not q.shown:
                        n["unjudged"] += 1
                        verdict = "re-measurement disturbed: cannot judge"
                    elif abs(shown.ratio / q.ratio - 1) <= TOLERANCE:
                        n["agree"] += 1
                        verdict = "within 20%"
                    else:
                        n["wrong"] += 1
                        verdict = "WRONG (more than 20% off)"
                rows.append([o["model"], "yes" if o["sliders"] else "no", session, engine,
                             shown.text if not shown.shown else f"{shown.ratio:.2f}x ({shown.lo:.2f}-{shown.hi:.2f})",
                             q.text if not q.shown else f"{q.ratio:.2f}x ({q.lo:.2f}-{q.hi:.2f})",
                             f"{q_load[0]:.1f}" if q_load[0] is not None else "", verdict])
    n["quiet_sessions"] = _sessions(quiet_results)
    n["quiet_failed"] = dict(failed)
    n["quiet_reference_deviations"] = sorted(round(d, 3) for d in ref_devs if d is not None)
    return rows, n


def construction(openings: list[dict]) -> tuple[int, int, int]:
    """(baseline figures not exactly 1.0, stored speed-ups against another engine, stored speed-ups looked at)."""
    from explorer.run.cache import RunCache

    not_one = other = total = 0
    for o in openings:
        os.environ["EXPLORER_CACHE_DIR"] = str(o["cache"])
        cache = RunCache()
        for key in cache.keys():
            r = cache.peek(key)
            if r is None:
                continue
            for engine, per in (r.get("speedup") or {}).items():
                for v in per.values():
                    total += 1
                    if key == o["baseline_key"]:
                        not_one += not (v.get("status") == "baseline" and v["ratio"] == 1.0 and v["ci"] == [1.0, 1.0])
                    elif v.get("status") == "measured":
                        other += v.get("against") != engine
    return not_one, other, total


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="explorer-stress-"))
    stop = threading.Event()
    threading.Thread(target=_sample_load, args=(stop,), daemon=True).start()
    cards = _cards()
    openings = []
    for i in range(OPENINGS):
        for sliders in (False, True):
            for name in MODELS:
                if name in cards:
                    openings.append(opening(tmp, name, i, sliders))
    C.log(f"  quiet re-measurements: this process holds {threading.active_count()} threads, load "
          f"{os.getloadavg()[0]:.1f}")
    rows, n = compare(openings)
    not_one, other, looked = construction(openings)
    alone, beside = live.slowdown(tmp, SLOWDOWN_ROUNDS, "digits_cnn-digits", epochs=2)
    stop.set()
    shutil.rmtree(tmp, ignore_errors=True)  # the openings' caches (hundreds of MB) are not kept
    ratio = statistics.median(beside) / statistics.median(alone)
    loads = [x for o in openings for x in o["load"]]
    before = openings[0]["load"][0] if openings and openings[0]["load"] else os.getloadavg()[0]
    cores = os.cpu_count()
    idle_share = n["idle_disturbed"] / max(n["idle_figures"], 1)  # timed with the machine idle: nothing stolen
    all_share = n["quiet_disturbed"] / max(n["quiet_figures"], 1)
    stolen = [x for x in n.pop("quiet_stolen") if x is not None]
    apart = n["quiet_figures"] - n["idle_figures"]
    idle_words = (f"{idle_share:.0%} ({n['idle_disturbed']} of the {n['idle_figures']} figures timed with the machine "
                  f"idle); over all {n['quiet_figures']} quiet re-measurements {all_share:.0%} "
                  f"({n['quiet_disturbed']})" + (
                      f": {apart} were timed while the hypervisor gave more than {STOLEN_IDLE:.0%} of the CPU time to "
                      f"other virtual machines on the host (up to {max(stolen):.0%}), load from outside this machine "
                      "that no process here sees" if apart else ""))
    opened = _sessions([r for o in openings for _, r in o["runs"]])
    quiet_s = n.pop("quiet_sessions")
    cpu_median = round(statistics.median(opened["shares"]), 3) if opened["shares"] else None
    why = [_sessions_words("During the openings", opened),
           _sessions_words("The quiet re-measurements (none of our other work running)", quiet_s)]
    if n["shown"] == 0:
        why.append("No speed-up was shown as a number in any opening, so the 20% comparison had nothing to judge: "
                   "its 0 wrong says that the page showed every figure as disturbed (and said the machine was too "
                   "busy) rather than showing noise as signal, which is what the issue asks for under external load; "
                   "it is no evidence that figures shown on a quieter machine are within 20%. That needs this script "
                   "on an idle machine.")
    checks = [
        C.Check("stored speed-ups against another engine than their own", other == 0,
                f"{other} of {looked} stored speed-ups"),
        C.Check("the baseline against itself is 1.0 exactly", not_one == 0,
                f"{not_one} baseline figures not exactly 1.0 (interval 1.0 to 1.0)"),
        C.Check("every speed-up shown as a number on the openings' first screens is within 20% of a quiet "
                "re-measurement of the same files, or shown as disturbed: 0 wrong", n["wrong"] == 0,
                f"{n['wrong']} wrong, {n['agree']} within 20%, {n['unjudged']} whose re-measurement was itself "
                f"disturbed, {n['disturbed_shown']} shown as disturbed"),
        C.Check(f"share of figures shown as disturbed on an idle machine (none of our work running, no CPU time "
                f"taken by the hypervisor): at most {IDLE_SHARE:.0%}", idle_share <= IDLE_SHARE, idle_words,
                _quiet_note(n)),
        C.Check(f"a page's run is at most {SLOWDOWN}x slower with the landscape running", ratio <= SLOWDOWN,
                f"{ratio:.2f}x (medians {statistics.median(beside):.1f} s and {statistics.median(alone):.1f} s)"),
    ]
    per_open = [[o["model"], "yes" if o["sliders"] else "no", f"{o['seconds']:.0f}", str(len(o["runs"])),
                 "yes" if o["sweep_finished"] else "no (stopped)",
                 f"{min(o['load']):.1f} / {statistics.median(o['load']):.1f} / {max(o['load']):.1f}"] for o in openings]
    parts = [
        f"Issue 22's targets, measured side by side in one run of this script on {cores} logical cores. "
        f"**Load:** the one-minute load average was {before:.1f} at the first opening and "
        f"{min(loads):.1f} to {max(loads):.1f} (median {statistics.median(loads):.1f}) during the openings, on "
        f"{cores} cores: "
        + ("the openings' own work (the page's runs, the landscape, the sweep and the extra sessions) on a machine "
           "otherwise quiet." if before < 1.0 else
           "other work was already running before the first opening, so these figures describe a shared machine."),
        f"The issue asks for 20 openings per condition; this run made {len(openings)} "
        f"({OPENINGS} per model and variant, BENCH_OPENINGS) to finish in about a quarter of an hour here.",
        "### The openings",
        "Each on an empty cache: the page's default run and its baseline on the run board, the model's landscape "
        "measuring in its worker, and `python -m explorer sweep` of 8 recipes (4 sparsities x fp32/int8, one "
        "fine-tuning epoch) in another process through the same cache; with sliders, two more sessions each "
        "asked for one more configuration (sparsity 60% and 70%) on the same board. Load average: min / median / "
        "max over the opening.",
        C.table(["model", "two more sessions", "seconds", "runs shown", "sweep finished", "load average"], per_open,
                "llrrll"),
        "### Every shown speed-up against a quiet re-measurement",
        "The tiles' figures (against the baseline in the same engine, batch of 256) as the sessions got them, and "
        "the same stored files timed again afterwards by the explorer's own timing with none of our other work "
        "running (interval in brackets; the load average when the re-measurement began).",
        C.table(["model", "sliders", "session", "engine", "shown", "quiet re-measurement", "load", "verdict"], rows,
                "llllllrl"),
        "### Why the timings were disturbed", " ".join(why),
        "### Claims", C.checks_table(checks), C.summary_line(checks)]
    C.write_section(NAME, "Speed figures under stress: openings beside the landscape and a sweep",
                    "\n\n".join(parts), latency=True, checks=checks,
                    facts={"openings": len(openings), **n, "cpu_share_median_openings": cpu_median,
                           "baseline_not_one": not_one, "other_engine": other,
                           "idle_disturbed_share": round(idle_share, 3),
                           "quiet_disturbed_share": round(all_share, 3), "slowdown": round(ratio, 2),
                           "load_min": min(loads), "load_median": statistics.median(loads), "load_max": max(loads)})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--quiet"]:
        _quiet_main(sys.argv[3:])
    else:
        main()
