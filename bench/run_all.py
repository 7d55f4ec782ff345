"""Run every benchmark and assemble docs/RESULTS.md: `.venv/bin/python bench/run_all.py`.

Each section script runs in its own process (one failing does not stop the others) and writes
docs/results/<name>.md and <name>.json; bench_pack.py and bench_cluster.py are run as they are and their
output kept verbatim. RESULTS.md gets a header (hardware, threads, date, versions, load), a summary of every
claim checked, and the sections in order. A re-run with a warm cache (cache/bench) recomputes nothing but
the figures that are cold or re-timed by design (explorer_perf, head-to-head latency, the two micro-benchmarks).

Options: --only seed001,peers (run these, assemble all), --assemble (run nothing), --remeasure (re-time the
latency of cached runs, for a re-run on an idle machine: BENCH_REMEASURE=1). BENCH_PEERS_PYTHON names the
interpreter of the environment with bench/requirements-peers.txt, for peers_transformer and peers_ptq.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time

import common as C

SECTIONS = ("fashion", "live", "page_open", "seed001", "seed000", "seed002", "seed004", "bnadapt", "collapse", "peers",
            "peers_transformer", "peers_ptq", "targets", "explorer_perf", "stress_speed", "named_arch")
# peers_transformer and peers_ptq need the peers' own environment (bench/requirements-peers.txt); without it
# peers_transformer's peers say "not installed" in their rows and peers_ptq stops, saying what to install
PEERS_PYTHON = os.environ.get("BENCH_PEERS_PYTHON", sys.executable)
PYTHON = {"peers_transformer": PEERS_PYTHON, "peers_ptq": PEERS_PYTHON}
MICRO = {"bench_pack": "Packed-format benchmark (`bench/bench_pack.py`)",
         "bench_cluster": "Clustering benchmark (`bench/bench_cluster.py`)"}
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def run_script(name: str, env: dict) -> tuple[float, int, str]:
    t = time.perf_counter()
    proc = subprocess.run([PYTHON.get(name, sys.executable), str(C.ROOT / "bench" / f"{name}.py")], cwd=C.ROOT, env=env,
                          stdout=subprocess.PIPE, text=True)
    return time.perf_counter() - t, proc.returncode, proc.stdout


def micro_section(name: str, seconds: float, rc: int, out: str) -> None:
    """The micro-benchmark's own output, verbatim, as a section."""
    title = MICRO[name]
    status = "" if rc == 0 else f"\n\n**The script exited with status {rc}.**"
    body = (f"## {title}\n\nOutput of `.venv/bin/python bench/{name}.py` as printed ({seconds:.0f} s), "
            f"unchanged:{status}\n\n```text\n{out.rstrip()}\n```\n")
    (C.RESULTS / f"{name}.md").write_text(body)


def versions() -> dict:
    import onnxruntime
    import streamlit
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "streamlit": streamlit.__version__}


def anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def read_json(name: str) -> dict:
    path = C.RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def headline() -> list[str]:
    """Lines for the README, from the sections' JSON facts: Fashion-MNIST first, digits below."""
    f, t, p = (read_json(n).get("facts", {}) for n in ("fashion", "targets", "explorer_perf"))
    checks = [c for n in SECTIONS for c in read_json(n).get("checks", [])]
    out = []
    if f.get("baseline_top1") is not None:
        size, lat, cold = f.get("size") or {}, f.get("latency") or {}, f.get("cold_s") or {}
        parts = []
        if size:
            parts.append(f"the smallest packed file 95% sure to lose at most a point of top-1 is {size['rf']}x smaller "
                         f"than the fp32 checkpoint ({size['delta']:+.2f} points, paired 95% interval "
                         f"{size['delta_ci'][0]:+.2f} to {size['delta_ci'][1]:+.2f}; target {size['target']:g}x "
                         f"{'met' if size['rf'] >= size['target'] else 'missed'})")
        else:
            parts.append("no packed file tried is 95% sure to lose at most a point of top-1")
        if lat:
            sp = {"ratio": lat["speedup"], "ci": lat["speedup_ci"]}
            verdict = ("faster" if lat["speedup_ci"][0] > 1 else "within noise" if lat["speedup_ci"][1] >= 1
                       else "slower")
            parts.append(f"the fastest such recipe ({lat['recipe']}) runs at {C.speedup_text(sp)} the speed of the "
                         f"baseline's own ONNX Runtime fp32 model ({verdict}, 95% interval; target {lat['target']:g}x "
                         f"{'met' if lat['speedup_ci'][0] >= lat['target'] else 'missed'})")
        else:
            parts.append("no faster recipe tried is 95% sure to lose at most a point")
        first = read_json("live").get("facts", {}).get("move_first_s") or {}
        shown = {m: first[n] for m in cold if (n := f"{m}-fashion-mnist") in first}
        if shown:
            parts.append("a cold slider move shows accuracy and size after " + " and ".join(
                f"{float(v):.1f} s on {m}" for m, v in shown.items()))
        if cold:
            parts.append(("the whole run, latency included, takes " if shown else "a cold slider move takes ")
                         + " and ".join(f"{v:.0f} s on {m}" for m, v in cold.items()))
        out.append(f"Measured on the Fashion-MNIST LeNet-5 (top-1 {f.get('baseline_top1')}% on 10,000 test images, "
                   f"one CPU thread, batch 256): " + "; ".join(parts) + ".")
    lat = [f"{v['speedup']:.1f}x on {m} ({v['engine']}, {v['delta']:+.2f} points)" for m in C.MODELS
           if (v := t.get(f"{m}_latency"))]
    size = [f"{v['rf']:.1f}x on {m}" for m in C.MODELS if (v := t.get(f"{m}_size"))]
    out.append(f"On the digits baselines (359 test images), 95% sure within one point of top-1: the fastest recipe "
               f"beats fp32 PyTorch eager by {' and '.join(lat) or 'no recipe the test set can vouch for'}; the "
               f"smallest packed file beats the fp32 checkpoint by {' and '.join(size) or 'n/a'}.")
    cold, warm = p.get("cold_s"), p.get("warm_s")
    unresolved = sum(c.get("verdict") == C.UNRESOLVED for c in checks)
    out.append(f"{sum(c['passed'] for c in checks)} of {len(checks)} claims checked pass"
               + (f", {unresolved} too close to call on their test set" if unresolved else "")
               + "; the default 40-recipe sweep runs in "
               f"{'n/a' if cold is None else f'{cold:.0f} s'} cold and "
               f"{'n/a' if warm is None else f'{warm:.2f} s'} warm. Details and every failure explained: "
               "[docs/RESULTS.md](docs/RESULTS.md).")
    return [f"- {line}" for line in out]


def update_readme(lines: list[str]) -> bool:
    """Rewrite the block between the results markers in README.md, if the markers are there."""
    path = C.ROOT / "README.md"
    text = path.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = head + README_START + "\n" + "\n".join(lines) + "\n" + README_END + tail
    if new != text:
        path.write_text(new)
    return True


def record_runtimes(runtimes: dict[str, tuple[float, int]], total: float | None, full: bool,
                    loads: tuple[float, float]) -> dict:
    """Runtimes of the latest run of each script (kept across partial runs in docs/results/runtimes.json)."""
    path = C.RESULTS / "runtimes.json"
    rec = json.loads(path.read_text()) if path.is_file() else {"scripts": {}}
    for n, (sec, rc) in runtimes.items():
        j = read_json(n)
        rec["scripts"][n] = {"seconds": round(sec, 1), "exit": rc, "date": dt.date.today().isoformat(),
                             "computed": j.get("computed"), "from_cache": j.get("from_cache")}
    if runtimes:
        rec["loads"] = [round(v, 2) for v in loads]
    if full and total is not None:
        rec["full_run"] = {"seconds": round(total, 1), "date": dt.date.today().isoformat()}
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def assemble(rec: dict) -> None:
    from explorer.measure.hardware import describe, hardware

    hw = hardware(C.threads())
    v = versions()
    names = [*SECTIONS, *MICRO]
    titles = {}
    for n in names:
        path = C.RESULTS / f"{n}.md"
        titles[n] = path.read_text().splitlines()[0].removeprefix("## ").strip() if path.is_file() else None
    lines = ["# Measured results", "",
             "Every figure below comes from the explorer's own runs, made by the scripts in `bench/` through the run "
             "cache (`cache/bench`), unless it is marked as a seed's or a peer's published figure with its "
             "source. Regenerate with `.venv/bin/python bench/run_all.py` (a re-run reads the cache; "
             "`--remeasure` re-times the latency of cached runs, for an idle machine).", "",
             "| | |", "| :--- | :--- |",
             f"| hardware | {describe(hw)} |",
             f"| CPU | {hw['cpu']}, {hw['logical_cores']} logical cores, {hw['machine']}, {hw['os']} |",
             f"| threads | latency: {C.threads()} (EXPLORER_THREADS); compression and fine-tuning: {C.TORCH_THREADS} "
             "torch thread (BENCH_TORCH_THREADS); sweeps: one thread per worker |",
             f"| date | {dt.date.today().isoformat()} |",
             f"| versions | python {v['python']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}, streamlit "
             f"{v['streamlit']} |",
             "| load average | " + ("{:.2f} at the start, {:.2f} at the end of the latest run_all".format(*rec["loads"])
                                    if rec.get("loads") else "not recorded")
             + " (2 cores shared with other developers: latency figures are noisy, see the repeatability table) |"]
    if rec.get("full_run"):
        lines.append(f"| runtime | {rec['full_run']['seconds']:.0f} s for the last full run_all "
                     f"({rec['full_run']['date']}) |")
    lines += ["", "## Contents", ""]
    lines += [f"{i}. [{titles[n]}](#{anchor(titles[n])})" for i, n in enumerate(names, 1) if titles[n]]
    checks = [(n, c) for n in SECTIONS for c in read_json(n).get("checks", [])]
    unresolved = sum(c.get("verdict") == C.UNRESOLVED for _, c in checks)
    lines += ["", "## Claims and targets at a glance", "",
              f"{sum(c['passed'] for _, c in checks)} of {len(checks)} pass"
              + (f"; {unresolved} cannot be told apart at 95% confidence on their test set (TOO FEW IMAGES: the "
                 "359 digits test images resolve about a point, the 10,000 of Fashion-MNIST about a fifth)"
                 if unresolved else "") + "; each section says why where one fails.",
              "", C.checks_table([C.Check(f"[{n}] {c['claim']}", c["passed"], c["measured"], c["note"],
                                          c.get("verdict", "")) for n, c in checks])]
    if rec["scripts"]:
        rows = [[f"`bench/{n}.py`", f"{r['seconds']:.0f}", str(r["exit"]), r["date"],
                 "" if r.get("computed") is None else str(r["computed"]),
                 "" if r.get("from_cache") is None else str(r["from_cache"])]
                for n in names if (r := rec["scripts"].get(n))]
        lines += ["", "## Script runtimes (latest run of each)", "",
                  C.table(["script", "seconds", "exit status", "date", "runs computed", "read from the cache"], rows,
                          "lrrrrr")]
    for n in names:
        path = C.RESULTS / f"{n}.md"
        lines += ["", path.read_text().rstrip() if path.is_file() else f"## {n}\n\n(not run yet)"]
    (C.ROOT / "docs" / "RESULTS.md").write_text("\n".join(lines) + "\n")
    C.log(f"wrote docs/RESULTS.md ({len(checks)} claims)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated section or micro-benchmark names")
    ap.add_argument("--assemble", action="store_true", help="run nothing; assemble RESULTS.md from docs/results")
    ap.add_argument("--remeasure", action="store_true", help="re-time cached runs' latency (BENCH_REMEASURE=1)")
    a = ap.parse_args()
    known = [*SECTIONS, *MICRO]
    todo = [] if a.assemble else (a.only.split(",") if a.only else known)
    bad = [n for n in todo if n not in known]
    if bad:
        raise SystemExit(f"--only {','.join(bad)}: not a benchmark; choose from {', '.join(known)}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if a.remeasure:
        env["BENCH_REMEASURE"] = "1"
    C.RESULTS.mkdir(parents=True, exist_ok=True)
    load0, t0, runtimes = os.getloadavg()[0], time.perf_counter(), {}
    for name in todo:
        C.log(f"== {name}")
        seconds, rc, out = run_script(name, env)
        runtimes[name] = (seconds, rc)
        if name in MICRO:
            micro_section(name, seconds, rc, out)
        elif out.strip():
            sys.stdout.write(out)
        C.log(f"== {name}: {seconds:.0f} s, exit {rc}")
    total = time.perf_counter() - t0 if todo else None
    rec = record_runtimes(runtimes, total, set(todo) == set(known), (load0, os.getloadavg()[0]))
    assemble(rec)
    if update_readme(headline()):
        C.log("updated the results lines in README.md")
    failed = [n for n, (_, rc) in runtimes.items() if rc]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (see their output above; RESULTS.md marks them)")


if __name__ == "__main__":
    main()
