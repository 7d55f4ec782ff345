"""The page as a first visitor meets it, in a real browser (Debian's Chromium through Playwright), on a cold server
and an empty cache, the default model, no click: seconds until the page's shell paints (title and sidebar), until
the model picker shows, until the first figures show (the Overview's top-1 tile), and how many runs the curves
hold three minutes after opening. Twice, side by side: on the machine as it is, then with a background load of
BENCH_LOAD_PROCS (default 4) busy processes started before the server, where the page must say what it is waiting
for. The machine's load average is recorded beside the figures: on a shared machine they move with it.

Run: .venv/bin/python bench/page_open.py   (writes docs/results/page_open.md; about 7 minutes)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import common as C

NAME = "page_open"
TARGETS = {"shell_s": 2.0, "first_s": 5.0, "points": 20}
OPEN_S = 180
LOAD_PROCS = int(os.environ.get("BENCH_LOAD_PROCS", "4"))
BUSY = "import time\nwhile True:\n    sum(i * i for i in range(10_000))\n"  # one core's worth of work, no I/O
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
TITLE = "Compression trade-off explorer"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(tmp: Path) -> tuple[subprocess.Popen, str, float]:
    """The server as `make run` starts it (explorer.app.serve: the page's libraries imported and the default
    configuration queued, then `streamlit run app.py`) on an empty cache, the landscape on (as a visitor gets it);
    seconds until it accepts a visitor."""
    env = dict(os.environ, EXPLORER_CACHE_DIR=str(tmp / "cache"), EXPLORER_LANDSCAPE="1", PYTHONUNBUFFERED="1")
    port = _port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "explorer.app.serve", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=C.ROOT, env=env, stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - t0 < 120:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


def _cpu() -> dict[int, tuple[int, int, str]]:
    """Every process's CPU time so far (clock ticks, user + system), its parent and its command line (Linux)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        out[int(pid)] = (int(f[11]) + int(f[12]), int(f[1]), cmd)
    return out


def _cpu_used(before: dict, after: dict, server: int) -> dict[str, float]:
    """CPU seconds each side used between two `_cpu` readings: the server with every process it started (runs,
    the landscape's worker), the browser (Chromium and Playwright's driver), and everything else."""
    tick = os.sysconf("SC_CLK_TCK")
    ours = {server}
    for _ in range(5):  # children, grandchildren...
        ours |= {p for p, (_, parent, _) in after.items() if parent in ours}
    used = {"server": 0.0, "browser": 0.0, "other": 0.0}
    for pid, (t, _, cmd) in after.items():
        side = "server" if pid in ours else "browser" if ("chromium" in cmd or "playwright" in cmd) else "other"
        used[side] += (t - before.get(pid, (0, 0, ""))[0]) / tick
    return used


def _points(page) -> int:
    chart = page.locator(".js-plotly-plot").filter(visible=True).first
    return chart.evaluate("el => (el._fullData || []).filter(t => t.name !== 'current' && t.name !== 'baseline')"
                          ".reduce((n, t) => n + Array.from(t.x || []).filter(v => v !== null).length, 0)")


def measure(tmp: Path) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    load = [os.getloadavg()[0]]
    proc, url, start_s = _server(tmp)
    out = {"server_s": start_s}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            cpu0 = _cpu()
            t0 = time.perf_counter()
            page.goto(url, timeout=120_000)
            page.get_by_role("heading", name=TITLE).wait_for(timeout=120_000)
            out["shell_s"] = time.perf_counter() - t0
            page.get_by_test_id("stSidebar").get_by_text("Baseline model").wait_for(timeout=300_000)
            out["picker_s"] = time.perf_counter() - t0
            page.wait_for_url(re.compile(r"baseline="), timeout=60_000)  # the page mirrors its model in the link
            out["model"] = parse_qs(urlparse(page.url).query)["baseline"][0]
            tile = page.get_by_test_id("stMetricLabel").get_by_text("Top-1 (measured)", exact=True).first
            waiting = page.get_by_text(re.compile(r"^Computing ")).first
            out["waiting"] = []  # what the page says it is waiting for, each distinct message once
            while True:
                try:
                    tile.wait_for(timeout=1_000)
                    break
                except PlaywrightTimeout:
                    if time.perf_counter() - t0 > 600:
                        raise
                    with contextlib.suppress(PlaywrightTimeout):
                        said = re.sub(r" \(\d+ s\)\..*", "", waiting.inner_text(timeout=500)).strip()
                        if said and said not in out["waiting"]:
                            out["waiting"].append(said)
            out["first_s"] = time.perf_counter() - t0
            out["cpu_to_first"] = _cpu_used(cpu0, _cpu(), proc.pid)
            load.append(os.getloadavg()[0])
            page.wait_for_timeout(max(0.0, OPEN_S - 10 - (time.perf_counter() - t0)) * 1000)
            page.get_by_role("tab", name="Curves and Pareto").click()
            page.wait_for_timeout(max(0.0, OPEN_S - (time.perf_counter() - t0)) * 1000)
            out["points"] = _points(page)
            text = page.get_by_text(re.compile(r"Landscape: \d+ of \d+ configurations")).first.inner_text()
            out["landscape"] = text
            load.append(os.getloadavg()[0])
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    out["load"] = load
    # the page's run (the first result with a compression step written: the landscape starts no point while the
    # page waits for its run): its stages' seconds, beside what the machine gave
    done = sorted((f.stat().st_mtime, f) for f in (tmp / "cache").rglob("result.json"))
    for _, f in done:
        res = json.loads(f.read_text())
        if res.get("recipe", {}).get("steps"):
            out["run_timings"] = {k: v for k, v in res.get("timings", {}).items() if isinstance(v, (int, float))}
            break
    return out


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True) for _ in range(n)]


def _both() -> dict[str, dict]:
    """The opening on the machine as it is, then beside LOAD_PROCS busy processes."""
    out = {}
    for label, procs in (("idle", 0), ("loaded", LOAD_PROCS)):
        settle = time.perf_counter()
        while not procs and os.getloadavg()[0] > 0.7 and time.perf_counter() - settle < 240:
            time.sleep(5)  # the quiet opening waits (a while) for the work before it to leave the load average
        busy = _busy(procs)
        try:
            time.sleep(5 if procs else 0)  # the load is there before the server starts
            with tempfile.TemporaryDirectory(prefix="explorer-page-open-") as tmp:
                out[label] = measure(Path(tmp))
        finally:
            for b in busy:
                b.kill()
                b.wait()
        time.sleep(20)  # the next opening starts on a settled machine
    return out


def main() -> None:
    if sys.argv[1:] == ["--render"]:  # the page again from the figures of the last run (docs/results/page_open.json)
        last = json.loads((C.RESULTS / f"{NAME}.json").read_text())
        C._stats["t0"] = time.perf_counter() - last["runtime_s"]  # the footer keeps the measuring run's time
        render(last["facts"])
    else:
        render(_both())


def _phases(said: list[str]) -> list[str]:
    """What the page said, each phase once: the fine-tuning loss and epoch counts left out."""
    out: list[str] = []
    for w in said:
        w = re.sub(r"(, loss [0-9.]+|: epoch \d+/\d+)", "", w)
        if w not in out:
            out.append(w)
    return out


def _spent(x: dict, cores: int | None) -> str:
    """Where the seconds to the first figures went: the CPU each side used, and the run's own stages."""
    if "cpu_to_first" not in x:
        return ""
    c, t = x["cpu_to_first"], x.get("run_timings", {})
    stages = (f" The run's own stages took {t.get('load', 0):.1f} s to load the data, {t.get('compress', 0):.1f} s "
              f"to prune and fine-tune and {t.get('evaluate', 0):.1f} s to measure top-1, counted from its start "
              "at the server's start-up, sharing the cores." if t else "")
    return (f"From opening to the first figures, the server used {c['server']:.1f} CPU seconds (the run, the page's "
            f"script, the baseline's scores) and the browser, on the same machine, {c['browser']:.1f}, of the "
            f"{(cores or 1) * x['first_s']:.1f} its {cores} cores offered.{stages} ")


def render(m: dict) -> None:
    idle, loaded = m["idle"], m["loaded"]
    cores = os.cpu_count()

    def load(x: dict) -> str:
        return ", ".join(f"{v:.1f}" for v in x["load"])

    def said(x: dict) -> str:
        return "; ".join(f"\"{w}\"" for w in _phases(x["waiting"])) or "(the figures came before a message was read)"

    quiet = idle["load"][0] < 1.0  # at the opening: what follows is the page's own work
    checks = [C.Check(f"the page's shell paints in < {TARGETS['shell_s']:g} s on a cold server",
                      max(idle["shell_s"], loaded["shell_s"]) < TARGETS["shell_s"],
                      f"{idle['shell_s']:.2f} s; {loaded['shell_s']:.2f} s under the load"),
              C.Check(f"the default model's first figures show in < {TARGETS['first_s']:g} s on an empty cache",
                      idle["first_s"] < TARGETS["first_s"], f"{idle['first_s']:.1f} s",
                      note=f"load average {load(idle)}" + ("" if quiet else ": not idle")),
              C.Check("under load, the page says what it is waiting for until the first figures show",
                      bool(loaded["waiting"]), said(loaded)),
              C.Check(f"at least {TARGETS['points']} points in the curves {OPEN_S} s after opening, no click",
                      idle["points"] >= TARGETS["points"], f"{idle['points']} points",
                      note=f"{loaded['points']} under the load")]
    rows = [["the server accepts a visitor, from its start", f"{idle['server_s']:.1f} s",
             f"{loaded['server_s']:.1f} s"],
            ["the shell (title, sidebar heading) paints", f"{idle['shell_s']:.2f} s", f"{loaded['shell_s']:.2f} s"],
            ["the model picker shows", f"{idle['picker_s']:.2f} s", f"{loaded['picker_s']:.2f} s"],
            ["the first figures show (top-1 tile)", f"{idle['first_s']:.1f} s", f"{loaded['first_s']:.1f} s"],
            ["the first figures, counted from the server's start", f"{idle['server_s'] + idle['first_s']:.1f} s",
             f"{loaded['server_s'] + loaded['first_s']:.1f} s"],
            [f"points in the curves {OPEN_S} s after opening", f"{idle['points']} ({idle.get('landscape', '')})",
             f"{loaded['points']} ({loaded.get('landscape', '')})"],
            ["one-minute load average (opening, first figures, end)", load(idle), load(loaded)]]
    if "cpu_to_first" in idle:
        rows.insert(5, ["CPU seconds from opening to the first figures: server, browser, other",
                        *(", ".join(f"{x['cpu_to_first'][k]:.1f}" for k in ("server", "browser", "other"))
                          + f" (of {cores * x['first_s']:.1f} on {cores} cores)" for x in (idle, loaded))])
    body = (f"A cold server started as `make run` starts it (`python -m explorer.app.serve`), an empty cache, the "
            f"page opened in Chromium on its default model ({idle['model']}) as soon as the server accepts a visitor, "
            f"and left alone for {OPEN_S} s; then the same again beside {LOAD_PROCS} busy processes (pure Python "
            f"loops, one core each) started before the server. {cores} cores. The first column is the machine as it "
            "was: " + ("idle" if quiet else "shared with other work, so not idle")
            + ".\n\n" + C.table(["measure", "as the machine was", f"beside {LOAD_PROCS} busy processes"], rows)
            + "\n\nBefore it accepts the first visitor, the server imports the page's libraries (PyTorch, SciPy, "
            "pandas, plotly) and queues the default configuration (pruning with two epochs of fine-tuning on 12,000 "
            "training images, then accuracy on 10,000 test images) and its baseline on its run board; the page takes "
            f"that run over. Of the {idle['first_s']:.1f} s from opening the page to its first figures, "
            f"{idle['picker_s']:.1f} s pass before the model picker shows; counted from the server's start, the "
            f"first figures come after {idle['server_s'] + idle['first_s']:.1f} s. " + _spent(idle, cores)
            + "The landscape measures one "
            "configuration at a time in its worker: it starts no point while a page waits for its own run, and "
            "pauses the point it is measuring while the page's runs and their timings go."
            + f"\n\nWhile it worked under the load, the page said: {said(loaded)}.\n\n" + C.checks_table(checks))
    C.write_section(NAME, "Opening the page: the shell, the default model's first figures, the curves", body,
                    checks=checks, facts=m)


if __name__ == "__main__":
    main()
