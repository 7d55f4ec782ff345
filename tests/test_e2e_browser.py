"""End to end in a real browser: `streamlit run app.py` on a free port, driven by Playwright in Debian's
Chromium (`make test` installs it; see DESIGN.md, environment facts). Moves the sparsity slider, waits for
the rerun, checks the figures, the charts and the URL, and fails on any exception or error box. With
EXPLORER_SCREENSHOTS=1, one more test saves the screenshots the README shows (docs/screenshot.png,
docs/screenshot-curves.png) from the page `make run` serves."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from explorer.core.data import available

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync",
                 # Debian's launcher adds this only when /dev/shm is small, and its check breaks on some hosts;
                 # containers often have a 64 MB /dev/shm, where Chromium crashes without it
                 "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 1000}
TITLE = "Compression trade-off explorer"
DIGITS = "/?baseline=digits_cnn-digits"  # the page opens on Fashion-MNIST where the data is; these tests use digits
# generous: the machine is shared, and the first run after a cold cache trains and measures
START_S, RUN_S, UI_MS = 60, 240, 30_000
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
RUNNING = '[data-testid="stStatusWidget"], [data-stale="true"]'  # a script run in flight, or its stale output
CHARTS = ".js-plotly-plot"
DONE = re.compile(r"^Rendered in [0-9.]+ s \((?!computing)")  # main() writes it last; its runs are complete


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it and any children), SIGKILL what is left after 10 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _start_server(tmp: Path, **extra: str) -> tuple[subprocess.Popen, str, Path]:
    env = dict(os.environ, EXPLORER_CACHE_DIR=str(tmp / "cache"), EXPLORER_LATENCY_BUDGET_S="0.1",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    log = tmp / "streamlit.log"
    for _attempt in range(3):  # the port found free may be taken before streamlit binds it
        port = _free_port()
        cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
               # nothing edits the sources during the test; watching the whole checkout (.venv included)
               # overflows inotify queues and costs CPU on a shared machine
               "--server.fileWatcherType", "none"]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return proc, url, log
            except OSError:
                pass
            time.sleep(0.25)
        _stop(proc)
        if "already in use" not in _tail(log):
            break
    pytest.fail(f"streamlit did not answer {url}/_stcore/health within {START_S} s:\n{_tail(log)}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url, log = _start_server(tmp_path_factory.mktemp("e2e"))
    try:
        yield url, log
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} missing: `make test` installs Debian's chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        except Exception as e:  # any launch failure means no browser here, not a broken app
            pytest.skip(f"playwright cannot launch {CHROMIUM}: {str(e).splitlines()[0]}")
        try:
            yield b
        finally:
            b.close()


def _wait_idle(page, what: str, timeout_s: float = RUN_S, settle_s: float = 1.0) -> None:
    """Until no script run is in flight and none of the page is stale, continuously for settle_s."""
    deadline, quiet_since = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if page.locator(RUNNING).count():
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle_s:
            return
        page.wait_for_timeout(200)
    pytest.fail(f"{what}: the app was still running after {timeout_s:.0f} s")


def _wait_for(condition, what: str, page, timeout_s: float = RUN_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:.0f} s for {what}")
        page.wait_for_timeout(250)


def _assert_no_errors(page, when: str, page_errors: list[str]) -> None:
    boxes = page.locator(ERRORS)
    assert boxes.count() == 0, f"{when}: error boxes on the page: {boxes.all_inner_texts()}"
    assert not page_errors, f"{when}: uncaught JavaScript errors: {page_errors}"


def _metric(page, label: str) -> str:
    m = page.get_by_test_id("stMetric").filter(has=page.get_by_test_id("stMetricLabel").get_by_text(label,
                                                                                                  exact=True))
    return m.get_by_test_id("stMetricValue").inner_text(timeout=UI_MS).strip()


def _slider_value(thumb) -> float:
    v = thumb.get_attribute("aria-valuenow")  # react-aria's thumb is an <input type=range>: value, not aria
    return float(v if v is not None else thumb.input_value())


def _charts_drawn(page, minimum: int, where: str) -> int:
    """Visible plotly charts that plotly has laid out with at least one trace, at least `minimum` of them."""
    from playwright.sync_api import expect

    visible = page.locator(CHARTS).filter(visible=True)
    expect(visible.nth(minimum - 1), f"{where}: fewer than {minimum} charts").to_be_visible(timeout=UI_MS)
    deadline = time.monotonic() + UI_MS / 1000
    while True:
        drawn = [visible.nth(i).evaluate("el => !!el._fullLayout && (el.data || []).length > 0 && "
                                         "el.getBoundingClientRect().height > 50")
                 for i in range(visible.count())]
        if all(drawn) or time.monotonic() > deadline:
            break
        page.wait_for_timeout(250)
    assert all(drawn), f"{where}: charts without data or not laid out: {drawn}"
    return len(drawn)


def _report_failure(page, tmp_path: Path, log: Path) -> None:
    """A screenshot of the page and the server log's tail, for a failing test's output."""
    try:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
    except Exception:  # the original failure matters, not this one
        pass
    print(f"failure screenshot: {tmp_path / 'failure.png'}\nstreamlit log:\n{_tail(log)}")


@contextlib.contextmanager
def _own_server_page(browser, tmp_path: Path, **env: str):
    """A server of the test's own (env added to its environment) and a page on it: (page, url, JavaScript errors).
    On a failure, a screenshot and the server log's tail; the page and the server are stopped either way."""
    proc, url, log = _start_server(tmp_path, **env)
    page = browser.new_page(viewport=VIEWPORT)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        yield page, url, page_errors
    except BaseException:
        _report_failure(page, tmp_path, log)
        raise
    finally:
        page.close()
        _stop(proc)


def _screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport to that block's height."""
    height = page.evaluate('() => document.querySelector("[data-testid=stMain]").scrollHeight')
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(int(height), 4000))})
    page.wait_for_timeout(500)  # charts relayout on resize
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_sparsity_slider_reruns_and_the_page_shows_results_and_charts(browser, server, tmp_path):
    from playwright.sync_api import expect

    url, log = server
    page = browser.new_page(viewport=VIEWPORT)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        page.goto(url + DIGITS, timeout=UI_MS)
        expect(page.get_by_role("heading", name=TITLE)).to_be_visible(timeout=RUN_S * 1000)
        expect(page.get_by_text(DONE)).to_be_visible(timeout=RUN_S * 1000)  # after the cold run
        _wait_idle(page, "first load")
        _assert_no_errors(page, "first load", page_errors)
        assert _metric(page, "Top-1 (measured)").endswith("%")
        assert _metric(page, "Weight sparsity") == "50.0%"
        # no chart count here: the Overview holds none, and plotly mounts the hidden tabs' charts when its
        # script chunk has loaded, which on a slow machine is after the run is done; each tab is checked below

        sidebar = page.get_by_test_id("stSidebar")
        slider = sidebar.get_by_test_id("stSlider").filter(has=page.get_by_role("slider", name="Sparsity"))
        thumb = slider.get_by_role("slider", name="Sparsity")
        before = _slider_value(thumb)
        assert before == pytest.approx(0.5)
        thumb.focus()
        # PageUp moves a tenth of the range in one committed change, so one rerun
        # (ten ArrowRights would each commit and queue a run of their own)
        thumb.press("PageUp")
        expect(slider.get_by_test_id("stSliderThumbValue")).not_to_have_text("0.50", timeout=UI_MS)
        after = _slider_value(thumb)
        assert after >= 0.59, f"the slider moved from {before} to {after}, expected at least 0.60"
        _wait_for(lambda: abs(float(_metric(page, "Weight sparsity").rstrip("%")) / 100 - after) < 0.015,
                  f"the weight sparsity figure to follow the slider to {after:.2f}", page)
        _wait_idle(page, "rerun after the slider moved")
        expect(page.get_by_text(DONE)).to_be_visible(timeout=UI_MS)
        _assert_no_errors(page, "after the slider moved", page_errors)

        assert _metric(page, "Top-1 (measured)").endswith("%")
        query = parse_qs(urlparse(page.url).query)
        assert float(query["sparsity"][0]) == pytest.approx(after), f"the URL does not mirror the slider: {page.url}"
        assert page.get_by_role("tab", name="Overview").get_attribute("aria-selected") == "true"

        # every tab is rendered into the page; only the shown one's charts are laid out
        for tab, minimum in (("Curves and Pareto", 4), ("Size and latency", 2), ("Layers", 1), ("Baseline", 1)):
            page.get_by_role("tab", name=tab).click()
            expect(page.get_by_role("tab", name=tab)).to_have_attribute("aria-selected", "true")
            _charts_drawn(page, minimum, tab)
            _assert_no_errors(page, f"tab {tab}", page_errors)
        page.get_by_role("tab", name="Overview").click()
        _assert_no_errors(page, "the end", page_errors)
    except BaseException:
        _report_failure(page, tmp_path, log)
        raise
    finally:
        page.close()


def _remove_options(page, label: str, keep: str) -> None:
    """Leave only `keep` selected in the multiselect labelled `label` (each removal is a rerun)."""
    box = page.get_by_test_id("stMultiSelect").filter(has_text=label).first
    while True:
        removes = [r for r in box.get_by_role("button").all() if (r.get_attribute("aria-label") or "").startswith(
            "Remove ") and r.get_attribute("aria-label") != f"Remove {keep}"]
        if not removes:
            return
        removes[0].click()
        _wait_idle(page, f"removing an option of {label}", settle_s=0.5)


@pytest.mark.slow  # a few minutes on a shared machine: two models opened, a sweep run
def test_a_model_switch_never_shows_the_previous_models_sweep(browser, tmp_path):
    """A sweep on one model, then another model chosen in the sidebar: the first model's sweep (its table and its
    CSV download) goes at once and does not come back under the new model's header; back on the first model,
    its sweep is there again."""
    from playwright.sync_api import expect

    with _own_server_page(browser, tmp_path, EXPLORER_LANDSCAPE="0") as (page, url, errors):
        page.goto(url + DIGITS + "&sparsity=0.0&prune_epochs=0&tab=Sweep", timeout=UI_MS)
        expect(page.get_by_text(DONE)).to_be_visible(timeout=RUN_S * 1000)
        _wait_idle(page, "first load")
        for label, keep in (("Sparsity", "0.0"), ("Bits", "32"), ("Shared values", "0")):
            _remove_options(page, label, keep)
        page.get_by_role("button", name="Run sweep (1 configurations)").click()
        csv = page.get_by_role("button", name="Download results CSV")
        expect(csv).to_be_visible(timeout=RUN_S * 1000)
        _wait_idle(page, "after the sweep")
        _assert_no_errors(page, "after the sweep", errors)

        other = "lenet5-fashion-mnist" if available("fashion-mnist") else "vgg13-digits"
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_test_id("stSelectbox").filter(has_text="Baseline model").click()
        page.get_by_role("option", name=other, exact=True).click()
        switched = time.monotonic()
        # gone at once, not greyed under the new model's header while its page is computed
        expect(csv).to_have_count(0, timeout=5_000)
        assert time.monotonic() - switched < 5
        # the new model's page drawn to its end (its run may still compute: that is not awaited)
        expect(page.get_by_text(re.compile(r"^Rendered in [0-9.]+ s \(computing\)"))).to_be_visible(
            timeout=RUN_S * 1000)
        _assert_no_errors(page, "the other model", errors)
        expect(csv).to_have_count(0)
        expect(page.get_by_role("button", name=re.compile(r"Run sweep"))).to_be_visible()
        expect(sidebar.get_by_text(re.compile(f"{other} opens on its default settings"))).to_be_visible()

        sidebar.get_by_test_id("stSelectbox").filter(has_text="Baseline model").click()
        page.get_by_role("option", name="digits_cnn-digits", exact=True).click()
        expect(csv).to_be_visible(timeout=RUN_S * 1000)  # its own sweep is kept


def _tracebacks(log: str) -> list[str]:
    """Each traceback in a server log, from its first line to the exception line that ends it."""
    out, cur = [], None
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            cur = [line]
        elif cur is not None:
            cur.append(line)
            if line and not line.startswith((" ", "\t")) and not line.startswith("During handling"):
                out.append("\n".join(cur))
                cur = None
    return out


def _client_gone(traceback: str) -> bool:
    """Streamlit's web server logging that it wrote to the websocket of a browser that was killed (the page
    refreshes itself while it computes, so a vanished browser can be mid-update): the server's transport,
    not the explorer."""
    last = traceback.strip().splitlines()[-1]
    return "WebSocketDisconnected" in last or "ClientDisconnect" in last or "WebSocketClosedError" in last


def _kill_processes_with(marker: str) -> int:
    """SIGKILL every process whose command line holds `marker`; how many there were."""
    killed = 0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


@pytest.mark.slow  # about 25-60 s on two cores: run by `make test-all`
def test_a_crashed_session_does_not_affect_another(browser, server, tmp_path):
    """Session A, in a browser of its own, asks for an uncached run, and that browser is killed while the
    run is going; session B renders and reruns normally, and A's configuration, asked for again, is
    served complete (the abandoned run neither poisoned the cache nor wedged the server)."""
    from playwright.sync_api import expect

    url, log = server
    slow = "?baseline=vgg13-digits&sparsity=0.9&schedule=gradual&prune_epochs=6"
    marker = f"--explorer-crash-test={os.getpid()}-{time.monotonic_ns()}"  # chromium ignores unknown switches
    other = browser.browser_type.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, marker], headless=True,
                                        timeout=60_000)
    b = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    b.on("pageerror", lambda e: errors.append(str(e)))
    try:
        a = other.new_page(viewport=VIEWPORT)
        a.goto(url + "/" + slow, timeout=UI_MS)
        # A's run is going: its script in flight, or the page saying it computes (the page's script is quick now
        # that a tab not open waits for the run, so it may be done before this looks)
        expect(a.locator(RUNNING).or_(a.get_by_text(re.compile(r"^Computing "))).first).to_be_visible(timeout=UI_MS)
        assert _kill_processes_with(marker) >= 1, "found no process of session A's browser to kill"
        _wait_for(lambda: not other.is_connected(), "session A's browser to go away", b, timeout_s=30)

        b.goto(url + DIGITS, timeout=UI_MS)
        expect(b.get_by_text(DONE)).to_be_visible(timeout=RUN_S * 1000)
        _wait_idle(b, "session B's first load")
        _assert_no_errors(b, "session B after A crashed", errors)
        assert _metric(b, "Weight sparsity") == "50.0%"

        b.goto(url + "/" + slow, timeout=UI_MS)  # the configuration A abandoned
        expect(b.get_by_text(DONE)).to_be_visible(timeout=RUN_S * 1000)
        _wait_idle(b, "session B on A's configuration")
        _assert_no_errors(b, "session B on A's configuration", errors)
        assert _metric(b, "Weight sparsity") == "90.0%"
        assert _metric(b, "Top-1 (measured)").endswith("%")
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
            assert r.read().strip() == b"ok"
        ours = [t for t in _tracebacks(_tail(log, 400)) if not _client_gone(t)]
        assert not ours, f"the server logged a traceback:\n{ours[0]}"
    except BaseException:
        _report_failure(b, tmp_path, log)
        raise
    finally:
        b.close()
        _kill_processes_with(marker)
        try:
            other.close()
        except Exception:  # a killed browser may refuse to close cleanly
            pass


def _points(page, chart_index: int = 0) -> int:
    """Points drawn in the first visible plotly chart (the sparsity-vs-accuracy curve in its tab)."""
    chart = page.locator(CHARTS).filter(visible=True).nth(chart_index)
    return chart.evaluate("el => (el._fullData || []).filter(t => t.name !== 'current' && t.name !== 'baseline')"
                          ".reduce((n, t) => n + Array.from(t.x || []).filter(v => v !== null).length, 0)")


@pytest.mark.slow  # over 10 s on two cores: run by `make test-all` (the default suite stays under 10 min)
def test_the_curves_fill_in_on_their_own(browser, tmp_path):
    """An empty cache, the page opened and left alone: the background landscape measures the default grid
    and the curve's point count grows without a click, past the idle time (a page that only watches keeps
    its landscape going: the curves' periodic redraw says it is still open)."""
    from playwright.sync_api import expect

    idle_s = 8
    with _own_server_page(browser, tmp_path, EXPLORER_LANDSCAPE="1", EXPLORER_LANDSCAPE_IDLE_S=str(idle_s)) as (
            page, url, _):
        page.goto(url + DIGITS + "&tab=Curves+and+Pareto", timeout=UI_MS)
        expect(page.get_by_text(DONE)).to_be_visible(timeout=RUN_S * 1000)
        expect(page.get_by_role("tab", name="Curves and Pareto")).to_have_attribute("aria-selected", "true")
        _charts_drawn(page, 1, "the curves")
        start = _points(page)
        _wait_for(lambda: _points(page) >= start + 3, "three more points on the curve, with no click", page,
                  timeout_s=RUN_S)
        page.wait_for_timeout(2 * idle_s * 1000)  # no script rerun since the first load, well past the idle time
        later = _points(page)
        _wait_for(lambda: _points(page) >= later + 2, f"two more points {2 * idle_s} s later, with no click", page,
                  timeout_s=RUN_S)
        expect(page.get_by_text(re.compile(r"Landscape: \d+ of 40 configurations"))).to_be_visible(timeout=UI_MS)
        page.get_by_role("tab", name="Overview").click()  # where a page opens: the measurement is named there too
        expect(page.get_by_text(re.compile(r"Background measurement: \d+ of 40 configurations"))).to_be_visible(
            timeout=UI_MS)


SHOT_POINTS, SHOT_WAIT_S = 20, 900


@pytest.mark.slow
@pytest.mark.timeout(SHOT_WAIT_S + 2 * RUN_S + 120)
@pytest.mark.skipif(os.environ.get("EXPLORER_SCREENSHOTS") != "1",
                    reason="saves the README's screenshots: run with EXPLORER_SCREENSHOTS=1")
def test_readme_screenshots(browser, tmp_path):
    """The page as `make run` serves it (its default model, an empty cache, the real latency budget): the
    Overview once the first run is done, and the curves once the background measurement has drawn
    SHOT_POINTS points or SHOT_WAIT_S has passed."""
    from playwright.sync_api import expect

    from explorer.core import settings

    budget = str(settings.parse("EXPLORER_LATENCY_BUDGET_S"))  # the page's own, not the other tests' shortcut
    with _own_server_page(browser, tmp_path, EXPLORER_LATENCY_BUDGET_S=budget, EXPLORER_LANDSCAPE="1") as (
            page, url, page_errors):
        page.goto(url, timeout=UI_MS)
        expect(page.get_by_text(DONE)).to_be_visible(timeout=RUN_S * 1000)
        _wait_idle(page, "first load")
        _assert_no_errors(page, "first load", page_errors)
        _screenshot(page, DOCS / "screenshot.png")
        page.get_by_role("tab", name="Curves and Pareto").click()
        _charts_drawn(page, 1, "the curves")
        deadline = time.monotonic() + SHOT_WAIT_S
        while _points(page) < SHOT_POINTS and time.monotonic() < deadline:
            page.wait_for_timeout(5000)
        page.reload(timeout=UI_MS)  # the freshest figures everywhere on the tab, not only in the curve
        page.get_by_role("tab", name="Curves and Pareto").click()
        expect(page.get_by_text(DONE)).to_be_visible(timeout=RUN_S * 1000)
        _wait_idle(page, "reload")
        _charts_drawn(page, 4, "the curves")
        _assert_no_errors(page, "the curves", page_errors)
        _screenshot(page, DOCS / "screenshot-curves.png")
        print(f"curves screenshot with {_points(page)} points")


@pytest.mark.slow  # over 20 s on two cores: run by `make test-all`; test_app's link test keeps it in the default suite
def test_a_link_holding_markup_makes_the_browser_fetch_nothing_elsewhere(browser, server, tmp_path):
    """Issue 21: `?sparsity=![x](http://attacker/p.png)` was rendered as an image, so every visitor of the link
    fetched the attacker's address. The page shows the text, and the browser asks only the page's own server."""
    from urllib.parse import quote

    from playwright.sync_api import expect

    url, log = server
    bad = "![x](http://attacker.invalid/p.png)<img src=http://attacker.invalid/q.png>"
    page = browser.new_page(viewport=VIEWPORT)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(f"{url}{DIGITS}&sparsity={quote(bad)}", timeout=UI_MS)
        expect(page.get_by_text(DONE)).to_be_visible(timeout=RUN_S * 1000)
        _wait_idle(page, "first load")
        warning = page.get_by_test_id("stMain").get_by_test_id("stAlert").filter(has_text="Ignored from the link")
        expect(warning).to_be_visible(timeout=UI_MS)  # in the page: at the sidebar's foot it was out of sight
        # the text as written (word joiners, invisible, keep the addresses from becoming links)
        assert f"sparsity={bad!r} is not a float" in warning.inner_text().replace("\u2060", "")
        assert page.locator("img[src*='attacker'], a[href*='attacker']").count() == 0
        page.wait_for_timeout(1000)  # a fetch the rendering started would be in flight by now
        own = urlparse(url).netloc
        elsewhere = [u for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")
                     and urlparse(u).netloc != own]
        assert not elsewhere, f"the browser asked other hosts: {elsewhere}"
        assert any(urlparse(u).netloc == own for u in requests)
    except BaseException:
        _report_failure(page, tmp_path, log)
        raise
    finally:
        page.close()


def _shown_speedups(page) -> list[tuple[str, str]]:
    """(tile label, delta text) of the first screen's speed tiles."""
    from explorer.app.ui.views import TILES

    out = []
    for label in TILES.values():
        m = page.get_by_test_id("stMetric").filter(has=page.get_by_test_id("stMetricLabel").get_by_text(label,
                                                                                                      exact=True))
        delta = m.get_by_test_id("stMetricDelta")
        out.append((label, delta.inner_text(timeout=UI_MS).strip() if delta.count() else ""))
    return out


@pytest.mark.slow  # a cold run with the landscape timing beside it: a minute or more on two cores
def test_the_first_screen_never_shows_a_speedup_with_a_wide_interval(browser, tmp_path):
    """Issue 22: an empty cache, the page opened on digits_cnn with the landscape measuring beside it, at the
    default timing budget. Every speed-up the first screen shows as a number is a stored figure that passed
    its checks, so its 95% interval's high over low is at most 1.3 at batch 256; every other tile says in
    words why it has no number. Every figure stored meanwhile, the landscape's included, keeps the bound."""
    from playwright.sync_api import expect

    from explorer.core.engines import B256, ORT_CPU_INT8, TORCH_CPU
    from explorer.measure.timing_checks import max_spread
    from explorer.run.cache import RunCache
    from explorer.run.result import speed

    with _own_server_page(browser, tmp_path, EXPLORER_LANDSCAPE="1", EXPLORER_LATENCY_BUDGET_S="0.3") as (
            page, url, errors):
        page.goto(url + DIGITS, timeout=UI_MS)
        expect(page.get_by_text(DONE)).to_be_visible(timeout=RUN_S * 1000)
        _wait_idle(page, "first load")
        _assert_no_errors(page, "first load", errors)
        tiles = _shown_speedups(page)
        cache = RunCache(tmp_path / "cache")
        stored = [r for r in (cache.peek(k) for k in cache.keys()) if r is not None]
        assert stored, "the first screen's run is not in the cache"
        for _label, text in tiles:
            if re.fullmatch(r"[0-9.]+x (faster|slower)", text):  # a number: it must be a checked figure
                figs = [speed(r, e, B256) for r in stored for e in (TORCH_CPU, ORT_CPU_INT8)]
                match = [f for f in figs if f.text == text]
                assert match, f"the tile's {text!r} is no stored figure"
                assert all(f.hi / f.lo <= max_spread(256) for f in match), (text, match)
            else:
                assert text in ("within noise", "the baseline itself (1.00x)") or text.startswith(
                    "timing disturbed") or text == "", tiles
        for r in stored:
            for kind in ("speedup", "deployment_gain"):
                for engine, per in (r.get(kind) or {}).items():
                    f = speed(r, engine, B256, kind)
                    if f.lo is not None and f.state != "baseline" and B256 in per:
                        assert f.hi / f.lo <= max_spread(256), (r["label"], kind, engine, f)
