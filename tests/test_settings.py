"""Every environment setting is bounded: an absurd count or duration is one line at start-up, not a run that
never ends or an OverflowError seconds into one (security review, issue 21)."""

import subprocess
import sys

import pytest

from explorer.core import settings
from tests.conftest import ROOT


def test_every_setting_has_a_maximum_its_message_states():
    for name, s in settings.SETTINGS.items():
        assert s.maximum is not None and s.maximum < 1e15, name
        assert settings.parse(name, str(s.maximum)) == s.maximum  # the maximum itself is allowed
        with pytest.raises(ValueError) as e:
            settings.parse(name, "1e308")
        assert str(e.value).startswith(f"{name}='1e308' must be ") and "\n" not in str(e.value)
        if s.maximum - s.minimum > 1:
            assert f"at most {settings._plain(s.maximum)} " in str(e.value)


@pytest.mark.parametrize("var,value,allowed", [
    ("EXPLORER_LATENCY_BUDGET_S", "1e308", "a positive number of seconds, at most 60"),
    ("EXPLORER_LATENCY_BUDGET_S", "61", "a positive number of seconds, at most 60"),
    ("EXPLORER_CACHE_MAX_MB", "1e308", "a number of megabytes >= 0, at most 16777216"),
    ("EXPLORER_TRAIN_THREADS", "99999999999", "a whole number of threads >= 1, at most 1024"),
    ("EXPLORER_THREADS", "1025", "a whole number of threads >= 1, at most 1024"),
    ("EXPLORER_EVAL_WORKERS", "100000", "a whole number of threads >= 1, at most 1024"),
    ("EXPLORER_MAX_UPLOAD_MB", "1e9", "a positive number of megabytes, at most 65536"),
    ("EXPLORER_ZIP_MAX_MB", "1e9", "a positive number of megabytes, at most 1048576"),
    ("EXPLORER_ZIP_MAX_FILES", "1e12", "a whole number >= 1, at most 10000000"),
    ("EXPLORER_ZIP_MAX_RATIO", "1e6", "a positive number, at most 10000"),
    ("EXPLORER_LANDSCAPE_IDLE_S", "1e9", "a positive number of seconds, at most 86400"),
])
def test_check_all_refuses_a_setting_over_its_maximum(monkeypatch, var, value, allowed):
    """These used to pass: 1e308 seconds of timing ran forever, 1e308 MB raised OverflowError in the cache,
    99999999999 threads passed the start-up check and overflowed in torch.set_num_threads."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError) as e:
        settings.check_all()
    assert str(e.value).startswith(f"{var}={value!r} must be {allowed} (default ")


def test_the_settings_in_range_still_parse(monkeypatch):
    for var, value, want in (("EXPLORER_LATENCY_BUDGET_S", "60", 60.0), ("EXPLORER_TRAIN_THREADS", "1024", 1024),
                             ("EXPLORER_CACHE_MAX_MB", "0", 0.0), ("EXPLORER_LANDSCAPE", "0", 0)):
        monkeypatch.setenv(var, value)
        assert settings.get(var) == want
    settings.check_all()


def test_the_cli_refuses_an_endless_latency_budget_in_one_line(tmp_path):
    import os

    recipe = tmp_path / "r.json"
    recipe.write_text('{"model": "digits_cnn", "steps": [{"kind": "prune", "sparsity": 0.5}]}')
    r = subprocess.run([sys.executable, "-m", "explorer", "run", "--recipe", str(recipe)], cwd=ROOT,
                       env={**os.environ, "EXPLORER_LATENCY_BUDGET_S": "1e308",
                            "EXPLORER_CACHE_DIR": str(tmp_path / "cache")},
                       capture_output=True, text=True, timeout=120)  # it used to time forever
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "error: EXPLORER_LATENCY_BUDGET_S='1e308' must be a positive number of seconds, at most 60" in r.stderr
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_every_message_states_the_least_value_parse_takes():
    """Issue 33: EXPLORER_CORES' message said '>= 1' beside its default 0 (every core), which parse takes. For every
    setting the least value the message states is taken, the default is taken, and what is just below is refused."""
    import re

    for name, s in settings.SETTINGS.items():
        assert settings.parse(name, f"{s.default:g}") == s.default, name
        message = s.allowed()
        least = re.search(r">= (\S+?),", message) or re.fullmatch(r"(\S+) or \S+", message)
        if least is None:
            assert message.startswith("a positive number") and s.minimum == 0, name
            low, below = 1e-9, "0"
        else:
            low, below = float(least.group(1)), f"{float(least.group(1)) - (1 if s.integer else 1e-9):g}"
        assert settings.parse(name, f"{low:g}") == low, name
        with pytest.raises(ValueError, match=rf"^{name}="):
            settings.parse(name, below)
    with pytest.raises(ValueError) as e:
        settings.parse("EXPLORER_CORES", "-1")
    assert str(e.value) == ("EXPLORER_CORES='-1' must be a whole number of cores >= 0, at most 4096 (default 0): cores "
                            "the explorer's work may use (0: every core this process may run on)")
