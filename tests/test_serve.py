"""The server's start-up (explorer.app.serve): the page's libraries imported and the default configuration queued
before the first visitor, then Streamlit's own `streamlit run app.py`; and the run board handing the server's run
over to the first page that watches it (explorer.run.jobs.STARTUP)."""

import threading
import time

from explorer.app import serve, service
from explorer.compress.prune import PruneConfig
from explorer.compress.recipe import Recipe
from explorer.run.jobs import COMPARISON, FOREGROUND, STARTUP, Board
from explorer.run.runner import run_key


def test_the_server_queues_the_default_configuration_then_runs_streamlit(monkeypatch):
    asked: list[tuple[str, str, int]] = []

    class FakeBoard:
        def submit(self, recipe, session, priority=FOREGROUND):
            asked.append((run_key(recipe), session, priority))
            return type("Job", (), {"key": run_key(recipe)})()

    ran: list[list[str]] = []
    monkeypatch.setattr(service, "board", FakeBoard)
    from streamlit.web import cli

    monkeypatch.setattr(cli, "main", lambda: ran.append(list(__import__("sys").argv)))
    assert serve.main(["--server.port", "8599"]) == 0
    recipe = service.default_recipe()
    assert recipe is not None and recipe.steps  # the sidebar's defaults compress: the baseline is the comparison
    control = service.control_recipe(recipe)  # and they fine-tune: the same training without compression too
    assert control is not None
    assert asked == [(run_key(recipe), STARTUP, FOREGROUND),
                     (run_key(service.baseline_recipe(recipe)), STARTUP, COMPARISON),
                     (run_key(control), STARTUP, COMPARISON)]
    assert ran == [["streamlit", "run", str(serve.APP), "--server.port", "8599"]]
    assert serve.APP.name == "app.py" and serve.APP.is_file()


def test_a_failed_start_up_step_is_one_line_and_the_server_starts(monkeypatch, capsys):
    def broken():
        raise ValueError("EXPLORER_THREADS='lots' is not a whole number")

    monkeypatch.setattr(service, "start_default", broken)
    from streamlit.web import cli

    ran: list[bool] = []
    monkeypatch.setattr(cli, "main", lambda: ran.append(True))
    assert serve.main([]) == 0 and ran == [True]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["Explorer: start-up step failed (ValueError: EXPLORER_THREADS='lots' is not a whole number); "
                   "starting the server anyway"]


class _Slow:
    """A run cache whose runs go on, reporting progress, until released (nothing is computed)."""

    release = threading.Event()
    reports = [0]

    def peek(self, key):
        return None

    def get(self, key):
        return None

    def get_or_run(self, recipe, progress=None, partial=None, **kw):
        while not self.release.is_set():
            try:
                progress(0.5, "working")
                self.reports[0] += 1
            except Exception:  # the board's cancellation, as the real cache ends a run that no page watches
                return {"status": "cancelled"}
            time.sleep(0.01)
        return {"status": "ok", "key": run_key(recipe)}


def _until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_the_first_page_takes_over_the_run_the_server_started_and_cancels_it_when_it_leaves():
    board = Board(_Slow, run_key)
    try:
        recipe = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.5),))
        job = board.submit(recipe, STARTUP)
        assert _until(lambda: job.state == "running")
        board.watch("page-1", set())  # a page showing something else: the server's run goes on
        time.sleep(0.05)
        assert not job.cancel.is_set() and job.watchers == {STARTUP}
        assert board.submit(recipe, "page-1") is job  # the first visitor joins it...
        board.watch("page-1", {job.key})
        assert job.watchers == {"page-1"}  # ...and it is that page's own run now
        board.watch("page-1", set())  # the page moved on: no one watches it
        assert _until(lambda: job.state == "cancelled")
    finally:
        _Slow.release.set()
        board.stop()


def test_the_servers_own_run_gives_way_to_a_page_drawing_its_shell():
    """While a page draws its shell (app.py, before its heavy imports) the run no page has taken over waits at its
    progress reports, and goes on once the shell is drawn; a run a page took over does not wait."""
    from explorer.core.opening import page_opening

    _Slow.release.clear()
    board = Board(_Slow, run_key)
    try:
        recipe = Recipe(model="digits_cnn", steps=(PruneConfig(sparsity=0.4),))
        job = board.submit(recipe, STARTUP)
        assert _until(lambda: _Slow.reports[0] > 0)
        with page_opening():
            time.sleep(0.1)  # its report under way ends
            held = _Slow.reports[0]
            time.sleep(0.3)
            assert _Slow.reports[0] == held  # waiting while the shell is drawn
        assert _until(lambda: _Slow.reports[0] > held + 3, timeout=2.0)  # at once after it, not after the longest wait
        board.submit(recipe, "page-1")
        board.watch("page-1", {job.key})  # the page's own run now
        with page_opening():  # another page drawing its shell
            now = _Slow.reports[0]
            assert _until(lambda: _Slow.reports[0] > now + 3, timeout=2.0)
    finally:
        _Slow.release.set()
        board.stop()


def test_the_page_listens_on_this_machine_only_unless_the_operator_says_otherwise(monkeypatch, tmp_path):
    """Issue 33: .streamlit/config.toml set no server.address, so the page started without `make run` (`streamlit
    run app.py`, or explorer.app.serve without --server.address) listened on every interface. The file says
    localhost, and Streamlit reads it for app.py from any working folder; a flag still overrides it."""
    import tomllib

    from streamlit import config

    assert tomllib.loads((serve.APP.parent / ".streamlit" / "config.toml").read_text())["server"]["address"] == (
        "localhost")
    monkeypatch.delenv("STREAMLIT_SERVER_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)  # started from another folder: the file beside app.py is the one that counts
    monkeypatch.setattr(config, "_main_script_path", str(serve.APP))
    try:
        config.get_config_options(force_reparse=True)
        assert config.get_option("server.address") == "localhost"
        config.get_config_options(force_reparse=True, options_from_flags={"server.address": "0.0.0.0"})
        assert config.get_option("server.address") == "0.0.0.0"
    finally:
        monkeypatch.undo()
        config.get_config_options(force_reparse=True)
