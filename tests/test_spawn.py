"""One owner of background work: every thread and process the explorer starts is started by explorer.core.spawn
(threads of work through the scheduler), under a name that docs/ARCHITECTURE.md's table of how work runs lists,
and torch's thread count is set in one module. Read from the code itself, so a thread started anywhere else fails."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from explorer.core import spawn

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "explorer").rglob("*.py"))
STARTERS = {"Thread", "ThreadPoolExecutor", "ProcessPoolExecutor", "Process", "Popen", "get_context", "fork",
            "forkpty", "system", "popen", "run", "call", "check_call", "check_output", "spawnv", "execv"}
MODULES = {"threading", "subprocess", "multiprocessing", "os", "concurrent.futures", "ctx"}


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_no_thread_or_process_starts_outside_spawn():
    found = []
    for path in SOURCES:
        if path.name == "spawn.py":
            continue
        imported = {a.asname or a.name for n in ast.walk(ast.parse(path.read_text()))
                    if isinstance(n, ast.ImportFrom) and n.module in MODULES for a in n.names}
        for call in _calls(path):
            name = _dotted(call.func)
            head, _, last = name.rpartition(".")
            if (last in STARTERS and head.split(".")[-1] in {m.split(".")[-1] for m in MODULES}) or \
                    (name in imported and name in STARTERS):
                found.append(f"{path.relative_to(ROOT)}:{call.lineno}: {name}")
    assert found == [], "start it through explorer.core.spawn (and list it in docs/ARCHITECTURE.md):\n" + \
        "\n".join(found)


def test_every_thread_and_process_is_named_in_the_architecture():
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    names = []
    for path in SOURCES:
        for call in _calls(path):
            fn = _dotted(call.func).rpartition(".")[2]
            given = [k.value for k in call.keywords if k.arg == "name"]
            if fn in ("thread", "process") and len(call.args) >= 2:
                given.append(call.args[-1])
            if fn == "start_service" and len(call.args) == 2:
                given.append(call.args[1])
            if fn in ("thread", "process", "start_service", "start_task", "Worker", "scorers"):
                names += [g.value for g in given if isinstance(g, ast.Constant) and isinstance(g.value, str)]
    names.append("explorer-score")  # spawn.scorers' own prefix
    assert len(set(names)) >= 8, names  # the runs' thread, the landscape's, the check, the parent watch...
    missing = sorted(n for n in set(names) if f"`{n}`" not in doc)
    assert missing == [], f"docs/ARCHITECTURE.md's table of how work runs does not name {missing}"


def test_torch_threads_are_set_in_one_module():
    setters = [f"{p.relative_to(ROOT)}:{c.lineno}" for p in SOURCES for c in _calls(p)
               if _dotted(c.func).endswith("set_num_threads")]
    assert setters and all(s.startswith("explorer/core/train.py:") for s in setters), setters


def test_a_child_ends_when_its_parent_is_killed(tmp_path):
    """die_with_parent: the parent killed (no chance to end its children), the child goes too."""
    child_pid = tmp_path / "child.pid"
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from explorer.core import spawn

        def child(parent):
            spawn.die_with_parent(parent, every_s=0.1)
            open({str(child_pid)!r}, "w").write(str(os.getpid()))
            time.sleep(600)

        if __name__ == "__main__":
            spawn.process(child, (os.getpid(),), "explorer-test-child")
            time.sleep(600)
        """))
    parent = subprocess.Popen([sys.executable, str(script)])
    deadline = time.monotonic() + 60
    while not child_pid.exists() or not child_pid.read_text():
        assert time.monotonic() < deadline and parent.poll() is None, "the child did not start"
        time.sleep(0.1)
    pid = int(child_pid.read_text())
    parent.kill()
    parent.wait()
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"child {pid} outlived its parent")


def test_a_thread_is_a_named_daemon():
    t = spawn.thread(lambda: time.sleep(0.01), "explorer-test")
    assert t.daemon and t.name == "explorer-test"
    t.join(5)
