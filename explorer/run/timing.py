"""What a run's timing needs besides its own files: the baseline's ONNX models (so a run in ONNX Runtime is
compared with the baseline in ONNX Runtime, like for like), the baseline's reference timing on this machine
(one of the checks a speed-up passes), and writing a timing into a RunResult.

The baseline's ONNX fp32 and int8 models are made once per checkpoint (and calibration seed) and kept under
the cache folder, in `.baseline-onnx/`; the int8 one is ONNX Runtime's default static per-channel int8, the
same as the baseline's own run makes, so the table's baseline column and the speed-up describe one model.
The reference timings live beside them, in `.baseline-timing/`, one file per checkpoint, CPU and thread count.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from explorer.compress.base import Deploy
from explorer.compress.recipe import Recipe
from explorer.core.figures import Timing
from explorer.core.paths import cache_dir
from explorer.measure.hardware import cpu_info
from explorer.measure.timing_checks import ran_beside, reference_interval
from explorer.models.baselines import baseline_data, load_baseline, read_card, sha256_file
from explorer.run.result import RunResult

ONNX_DIR, TIMING_DIR = ".baseline-onnx", ".baseline-timing"


def _digest(path: Path) -> str:
    st = path.stat()
    return _digest_of(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _digest_of(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(f"{sha256_file(path)}:{size}".encode()).hexdigest()[:16]


def baseline_onnx(recipe: Recipe) -> dict[str, Any]:
    """{"fp32": path or None, "int8": path or None, "reason": why not, or None} for the recipe's baseline."""
    path = recipe.checkpoint_path
    folder = cache_dir() / ONNX_DIR / f"{_digest(path)}-seed{recipe.seed}"
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    if not (fp32.is_file() and int8.is_file()):
        try:
            _build(recipe, folder)
        except Exception as e:  # the run's own export says why, where it fails too
            from explorer.core.errors import first_line

            return {"fp32": None, "int8": None, "reason": f"the baseline's ONNX model could not be made: "
                                                           f"{first_line(e)}"}
    return {"fp32": str(fp32), "int8": str(int8), "reason": None}


def _build(recipe: Recipe, folder: Path) -> None:
    from explorer.measure.onnx_export import export_onnx, quantize_int8

    card = read_card(recipe.checkpoint_path)
    data = baseline_data(card)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        if recipe.checkpoint_path.suffix == ".onnx":
            shutil.copyfile(recipe.checkpoint_path, tmp / "model.onnx")
        else:
            export_onnx(load_baseline(recipe.checkpoint_path)[0], data.input_shape, tmp / "model.onnx")
        d = Deploy.default()
        calib = data.calibration(min(d.calibration_samples, len(data.train)), seed=recipe.seed).numpy()
        quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx", mode=d.mode, calibration=calib,
                      per_channel=d.per_channel, method=d.calibration, symmetric=d.symmetric)
        try:
            os.rename(tmp, folder)  # in one step; another process that made it first wins
        except OSError:
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _timing_file(recipe: Recipe, threads: int) -> Path:
    cpu = cpu_info()["cpu"]
    h = hashlib.sha256(f"{_digest(recipe.checkpoint_path)}:{cpu}:{threads}".encode()).hexdigest()[:20]
    return cache_dir() / TIMING_DIR / f"{h}.json"


def reference_times(recipe: Recipe, threads: int) -> dict[str, dict[str, Any]]:
    """The baseline's reference timing on this machine: "engine/b256" -> {"median_ms", "ci_ms", "source"}."""
    with contextlib.suppress(OSError, ValueError):
        book: dict[str, dict[str, Any]] = json.loads(_timing_file(recipe, threads).read_text())
        return book
    return {}


HISTORY = 15  # the baseline's clean sessions a reference timing remembers


def update_reference(recipe: Recipe, threads: int, lat: Timing) -> None:
    """Keep the baseline's reference timing on this machine: the record of its last `HISTORY` steady timing sessions,
    each the baseline's median in one session whose rounds all had the CPU, with nothing else keeping the other
    cores busy (timing_checks.ran_beside), and whose other checks (narrow, agreement) passed: the baseline's own
    run, or any run's session (failing at most the reference check). The reference is their median, and its interval
    the 95% prediction interval of one more session's median from theirs (timing_checks.reference_interval; none
    below MIN_REFERENCE_SESSIONS sessions): on a shared machine the same model's time moves between quiet sessions
    by more than one session's interval (its caches and memory bandwidth are shared with other programs), and a
    single session would flag the next ones. Keeping only the last sessions lets the reference follow a machine that
    changed."""
    own = not recipe.steps
    book = reference_times(recipe, threads)
    changed = False
    quality = lat.get("timing_quality") or {}
    for engine, per in (lat.get("baseline") or {}).items():
        for b, fig in per.items():
            key = f"{engine}/{b}"
            if own:
                steady = all(s["cpu_ok"] and not ran_beside(s.get("others_busy"))
                             for s in quality.get("sessions", []) if s["batch"] == b)
                source = "the baseline's own run"
            else:
                check = (quality.get("figures", {}).get("speedup", {}).get(engine) or {}).get(b) or {}
                steady = bool(check) and not set(check["failed"]) - {"reference"} and not ran_beside(
                    check.get("others_busy"))
                source = "a run's session"
            if not (steady and fig.get("available")):
                continue
            old = book.get(key) or {}
            session = {"median_ms": fig["median_ms"], "ci_ms": list(fig["ci_ms"]), "source": source,
                       "when": round(time.time())}
            kept = old.get("history") or ([{k: old[k] for k in session if k in old}] if old else [])
            history = [*kept, session][-HISTORY:]
            medians = [h["median_ms"] for h in history]
            book[key] = {"median_ms": round(statistics.median(medians), 5), "history": history, "source": source,
                         "ci_ms": reference_interval(medians), "sessions": len(history)}
            changed = True
    if changed:
        path = _timing_file(recipe, threads)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(book, indent=1))
        os.replace(tmp, path)


def apply(result: RunResult, lat: Timing) -> RunResult:
    """The RunResult with a timing written in (explorer.measure.speedup.measure_latency's answer)."""
    out = RunResult(**result)
    quality = lat["timing_quality"]
    out.update({"latency": lat["engines"], "speedup": lat["speedup"], "speedup_reference": lat["reference"],
                "deployment_gain": lat["deployment_gain"], "deployment_reference": lat["deployment_reference"],
                "baseline_latency": lat["baseline"], "timing_quality": quality, "latency_threads": lat["threads"],
                "hardware": {**lat["hardware"], "load_average": quality["load_average"]}})
    return out
