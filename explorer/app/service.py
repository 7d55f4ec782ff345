"""What the UI asks of the backend, in one place: baselines, a run through the cache, the table of
cached runs for a baseline, sweeps and artifacts. Keeps torch out of the UI modules."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

# The page's one door (an import-linter contract in pyproject.toml): what explorer.app.ui needs from the layers
# below, named here so the page imports only this module, app.plots, core.words, core.engines and core.markup.
from explorer.app.metrics import across_seeds, resolution, sweet_spot
from explorer.app.metrics import forgets as compute
from explorer.app.tables import (
    CONFIDENCES,
    LATENCY_COLS,
    SHIP_DEFAULT,
    SHIPS,
    SIZE_COLS,
    baseline_row,
    fmt_bytes,
    readable,
    ship_choices,
    shipped,
    speed_cell,
    sweet_spot_table,
)
from explorer.compress.base import Control
from explorer.compress.finetune import control_of
from explorer.compress.recipe import Recipe, recipe_words  # (the page's door to a recipe's words)
from explorer.core import markup, plugins, preprocessing, roots, scratch, settings, words
from explorer.core.card import ModelCard
from explorer.core.data import available, how_to_get, list_datasets
from explorer.core.train import Progress
from explorer.core.zoo import all_model_names, create_model, list_models
from explorer.measure.accuracy import load_predictions
from explorer.measure.hardware import describe
from explorer.models import baselines, feeding, sandbox, travel, user
from explorer.models.user import check_upload_size, list_user_models
from explorer.run import control as fair
from explorer.run import sensitivity as sens
from explorer.run.cache import RunCache
from explorer.run.collapse import collapsed, emptied_words  # a model that guesses, in words
from explorer.run.collapse import words as collapse_words
from explorer.run.controls import (  # (the page's names for the techniques' controls)
    CHOICES,
    DEFAULTS,
    RANGES,
    all_controls,
    build,
    explain,
    from_recipe,
    relevant,
    sections,
)
from explorer.run.executor import Estimate, SweepProgress, estimate, run_sweep
from explorer.run.grid import Grid, page_choices
from explorer.run.jobs import (
    COMPARISON,
    STARTUP,
    Board,
)
from explorer.run.landscape import Landscapes
from explorer.run.result import (
    FILES,
    RunResult,
    Speed,
    disturbed_figures,
    results_frame,
    speed,
    speed_with_interval,
)
from explorer.run.runner import run_key

# the names above that the page takes through this door, said for the type checker (its own functions are the page's
# too); a name the page needs from below is added here
__all__ = [
    "CHOICES", "COMPARISON", "CONFIDENCES", "DEFAULTS", "LATENCY_COLS", "RANGES", "SHIPS", "SHIP_DEFAULT", "SIZE_COLS",
    "Control", "ModelCard", "ship_choices", "shipped", "collapsed", "emptied_words", "collapse_words",
    "Recipe", "RunResult", "Speed", "across_seeds", "all_controls", "baseline_row", "build", "describe",
    "disturbed_figures", "explain", "fmt_bytes", "readable", "recipe_words", "relevant", "resolution", "sections",
    "speed", "speed_cell", "speed_with_interval", "sweet_spot", "sweet_spot_table",
]

# result.json path -> (stats, checked result): re-read only new runs
_frames: dict[str, tuple[tuple[int, ...], RunResult]] = {}
_frames_lock = threading.Lock()  # the page's sessions render in threads of their own


def datasets() -> list[str]:
    return list_datasets()


def architectures(libraries: bool = True) -> list[str]:
    """What a state_dict can be loaded into: the zoo's and the plugins' architectures, then (with `libraries`)
    every torchvision and timm classification model by name (built by the installed library with random weights;
    nothing downloaded). Listing the libraries' names imports both (seconds on two cores): a page lists them
    when its "Your model" tab is open, not beside its first run."""
    return all_model_names() if libraries else list_models()


_pass = threading.local()  # the page's pass being drawn in this thread: what it asked, by question


@contextlib.contextmanager
def render() -> Iterator[None]:
    """One pass of the page's script: what it asks more than once (the results table, the landscape's status) is
    computed once in it. A fragment drawn inside the page's pass shares it; a fragment's own rerun is a pass of its
    own. Sessions draw in threads of their own, so each pass is its thread's."""
    if getattr(_pass, "asked", None) is not None:
        yield
        return
    _pass.asked = {}
    try:
        yield
    finally:
        _pass.asked = None


def _once_per_pass(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def asked(*args: Any) -> Any:
        memo = getattr(_pass, "asked", None)
        if memo is None:
            return fn(*args)
        question = (fn.__name__, json.dumps(args, sort_keys=True, default=str))
        if question not in memo:
            memo[question] = fn(*args)
        return memo[question]

    return asked


_caches: dict[tuple[str, str], RunCache] = {}
_caches_lock = threading.Lock()


def cache() -> RunCache:
    """The run cache the settings name now, one object per folder and size cap for the whole server: a render
    used to build a RunCache (claiming its folder and sweeping its scratch space) for every figure it asked."""
    from explorer.core import cachedir, paths

    at = (str(paths.cache_dir()), os.environ.get("EXPLORER_CACHE_MAX_MB", ""))
    with _caches_lock:
        if at not in _caches or not (Path(at[0]) / cachedir.MARKER).is_file():  # a folder removed meanwhile
            _caches[at] = RunCache()
        return _caches[at]


# the weights' names that tell a layer kind, read from a safetensors header without building the model
_NAMES = {"batchnorm": (".running_mean",),  # BatchNorm's running statistics (what BatchNorm adaptation re-estimates)
          # attention: timm's fused qkv, torch.nn.MultiheadAttention's in_proj, Hugging Face's query
          "attention": (".attn.qkv.weight", ".in_proj_weight", ".attention.self.query.weight")}


@functools.lru_cache(maxsize=64)
def _weight_names_in(path: str, mtime_ns: int, kind: str) -> bool | None:
    """Whether a safetensors file holds weights of `kind`, read from its header alone; None for another format."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return any(k.endswith(_NAMES[kind]) for k in f.keys())
    except (SafetensorError, OSError, ValueError):
        return None


def _has(card: ModelCard, kind: str) -> bool:
    """Whether the card's model has layers of `kind` (BatchNorm, attention): from its weights' names where they
    are safetensors (no model built: the first page lists every card), else by building the architecture."""
    path = card.get("path")
    if path:
        with contextlib.suppress(OSError):
            found = _weight_names_in(path, os.stat(path).st_mtime_ns, kind)
            if found is not None:
                return found
    return _built_has(card["architecture"], json.dumps(card.get("arch_kwargs") or {}, sort_keys=True), kind)


@functools.lru_cache(maxsize=64)
def _built_has(architecture: str, arch_kwargs: str, kind: str) -> bool:
    from torch import nn

    from explorer.compress.attention import attention_blocks

    try:
        model = create_model(architecture, **json.loads(arch_kwargs))
    except (ValueError, TypeError):  # a card the zoo cannot build says so where it is loaded
        return False
    if kind == "attention":
        return bool(attention_blocks(model))
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


PREFERRED_BASELINES = ("lenet5-fashion-mnist", "digits_cnn-digits")  # the page opens on the first present


def all_baselines() -> list[ModelCard]:
    """The committed baselines, then the models users added (state_dicts and ONNX); each says whether its
    data set is on this machine, and each PyTorch one whether it has BatchNorm layers (the page offers
    BatchNorm adaptation for those)."""
    cards = baselines.list_baselines() + list_user_models()
    for c in cards:
        c["data_available"] = available(c["dataset"], c.get("dataset_root"))
        if c.get("format") != "onnx" and "architecture" in c:
            c["batchnorm"] = _has(c, "batchnorm")
            c["attention"] = _has(c, "attention")  # the page offers pruning heads and MLP neurons for these
    return cards


def list_baselines() -> list[ModelCard]:
    """The baselines whose data set is on this machine (the others cannot be measured here)."""
    return [c for c in all_baselines() if c["data_available"]]


def default_baseline(names: list[str]) -> str:
    """Fashion-MNIST's LeNet-5 where its data is here (10,000 test images resolve differences the 359 of
    digits cannot), else the digits CNN, else the first."""
    return next((n for n in PREFERRED_BASELINES if n in names), names[0])


def missing_data_note() -> str | None:
    """One line of Markdown for the baselines hidden because their data set is not on this machine (the names of
    models users added come escaped)."""
    missing = [c for c in all_baselines() if not c["data_available"]]
    if not missing:
        return None
    sets = sorted({c["dataset"] for c in missing})
    how = "; ".join(f"{d}: {how_to_get(d)}" for d in sets)
    who = words.count(len(missing), "baseline") + (" needs" if len(missing) == 1 else " need")
    return (f"{who} data not on this machine ({', '.join(markup.md(c['name']) for c in missing)}), so "
            f"{'it is' if len(missing) == 1 else 'they are'} hidden. To get it: {how}.")


def add_model(path: str, *, arch: str | None, dataset: str, root: str | None, name: str | None,
              shown: str | None = None, on_wait: Callable[[str], None] | None = None,
              mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
              image_size: int | None = None) -> ModelCard:
    """The page's "Your model": a state_dict with its architecture, or an ONNX model. Programs (TorchScript,
    exported programs, pickled modules) are always refused here: trusting code is for the command line. A data
    folder must lie in EXPLORER_DATA_ROOTS or be an uploaded zip's (the page reads no other server folder). The
    uploaded file's name (`shown`) is for this visitor's messages only: it stays out of the card and of the model's
    name, which every visitor lists. While other checks hold every turn, `on_wait` gets the sentence that says
    how many go first. `mean`, `std` and `image_size`: what the model was trained with (None: the data set's)."""
    if root is not None:
        root = str(page_folder(root))
    told = None if on_wait is None else (lambda ahead: on_wait(sandbox.waiting(ahead)))
    return user.add_model(path, arch=arch, dataset=dataset, root=root, name=name, shown=shown, trust_code=False,
                          file_name=False, on_wait=told, mean=mean, std=std, image_size=image_size)


def parse_values(text: str, what: str) -> tuple[float, ...] | None:
    """A mean or std as typed in the form ('0.5' or '0.485, 0.456, 0.406'); None for a blank."""
    return preprocessing.parse_values(text, what)


def feed_preview(dataset: str, root: str | None, image_size: int | None, mean: tuple[float, ...] | None,
                 std: tuple[float, ...] | None) -> str:
    """What the explorer will feed a model added on this data with these settings, in words (the data set is read
    once for its size and statistics; its channels may still change to those the model's first layer takes)."""
    return feeding.feed_preview(dataset, None if root is None else str(page_folder(root)), image_size, mean, std)


def feed_words(card: ModelCard) -> str | None:
    """What the card's model is fed, in words."""
    return feeding.feed_words(card)


def recipe_download(result: RunResult) -> str:
    """The recipe the page hands out for a run: its model by name and sha256 (no path of this server), and every
    setting that changes its figures, so that `python -m explorer run --recipe` reproduces them elsewhere."""
    return json.dumps(travel.shared_of(result), indent=2)


def data_roots() -> tuple[Path, ...]:
    """The folders the operator lets the page read (EXPLORER_DATA_ROOTS); none by default."""
    return roots.data_roots()


def page_folder(folder: str) -> Path:
    """A data folder a visitor named, resolved, if the page may read it; else a ValueError that names the allowed
    roots and says nothing of whether the folder exists."""
    return roots.check_page_folder(folder, also=(user.user_data_dir(),))


def check_upload(n_bytes: int, what: str) -> None:
    check_upload_size(n_bytes, what)


def add_dataset_zip(zip_path: str, name: str | None, shown: str | None = None) -> str:
    """Extract an uploaded image-folder zip safely (named by a short hash of it where `name` is None, never by its
    file name); returns the folder to use as the dataset root."""
    return user.add_dataset_zip(zip_path, name, shown=shown)


def upload_folder() -> contextlib.AbstractContextManager[Path]:
    """A scratch folder for an upload's bytes while they are checked (removed afterwards, and at start-up
    if the server was killed meanwhile)."""
    return scratch.folder("upload")


_cleaned = False


def start_up() -> None:
    """Every render: the settings checked, in one line, and the operator's plugins imported (EXPLORER_PLUGINS and
    installed entry points; one that fails is one line); once per process: scratch folders of killed
    processes removed."""
    global _cleaned
    settings.check_all()
    roots.data_roots()
    plugins.load()
    if not _cleaned:
        scratch.clean()
        _cleaned = True


def describe_baseline(path: str) -> dict[str, Any]:
    """The Baseline tab's figures: its whole test split scored as the scheduler's work, at the page's own priority,
    so that it pauses while a latency timing holds the machine."""
    from explorer.run import scheduler

    with scheduler.work():
        return baselines.describe_baseline(path)


def run(recipe: Recipe, progress: Progress | None = None) -> RunResult:
    return cache().get_or_run(recipe, progress=progress)


def _stored_runs() -> list[tuple[tuple[int, ...], RunResult]]:
    """Every stored run, each with the version of its result.json (read again only when that file changed)."""
    c = cache()
    out = []
    for key in sorted(c.stored()):
        path = c.root / key / "result.json"
        try:
            st = path.stat()
        except OSError:
            continue
        stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        with _frames_lock:
            hit = _frames.get(str(path))
        if hit is None or hit[0] != stamp:
            r = c.peek(key)
            if r is None:
                continue
            hit = (stamp, r)
            with _frames_lock:
                _frames[str(path)] = hit
        out.append(hit)
    return out


def _of(r: RunResult, model: str, dataset: str, checkpoint: str | None) -> bool:
    return (r.get("model"), r.get("dataset"), r.get("recipe", {}).get("checkpoint")) == (model, dataset, checkpoint)


def cached_results(model: str, dataset: str, checkpoint: str | None = None) -> list[RunResult]:
    """Every stored run of this baseline (light read: the checked result JSON of complete entries)."""
    return [r for _, r in _stored_runs() if _of(r, model, dataset, checkpoint)]


_tables: dict[tuple[Any, ...], pd.DataFrame] = {}  # (baseline, the versions of its runs) -> its results table


def frame(model: str, dataset: str, checkpoint: str | None = None) -> pd.DataFrame:
    """The table of this baseline's stored runs (a copy of its own), built again only when one of them changed: the
    compressions to choose from, each with its comparison against its same-budget control where that is stored
    (the control_* columns). The controls themselves are in `control_frame`."""
    df = _frame(model, dataset, checkpoint)
    return df[~df["control"].fillna(False).astype(bool)].reset_index(drop=True)


def control_frame(model: str, dataset: str, checkpoint: str | None = None) -> pd.DataFrame:
    """The same-budget controls stored for this baseline (the baseline fine-tuned with no compression), one row
    each: the curves' reference lines."""
    df = _frame(model, dataset, checkpoint)
    return df[df["control"].fillna(False).astype(bool)].reset_index(drop=True)


def _with_controls(runs: list[RunResult]) -> list[RunResult]:
    """Each run with its comparison against its same-budget control, where both are stored."""
    by_key = {r.get("key"): r for r in runs}
    out = []
    for r in runs:
        recipe = fair.recipe_of(r)
        try:
            held = by_key.get(run_key(recipe)) if recipe is not None else None
        except ValueError:  # its checkpoint is gone: the run is listed without its control
            held = None
        out.append(r if held is None else fair.attach(r, held, cache()))
    return out


@_once_per_pass
def _frame(model: str, dataset: str, checkpoint: str | None = None) -> pd.DataFrame:
    runs = [(stamp, r) for stamp, r in _stored_runs() if _of(r, model, dataset, checkpoint)]
    at = (model, dataset, checkpoint, tuple((r.get("key"), stamp) for stamp, r in runs))
    with _frames_lock:
        df = _tables.get(at)
    if df is None:
        df = results_frame(_with_controls([r for _, r in runs]))
        if df.empty:
            df = pd.DataFrame(columns=["key", "label", "status", "top1", "accuracy_delta", "sparsity_requested",
                                       "bits", "clusters", "packed_bytes", "recipe_json", "control"])
        with _frames_lock:
            if len(_tables) > 64:
                _tables.clear()
            _tables[at] = df
    return df.copy()


def sweep_grid(card: ModelCard, axes: dict[str, list[Any]] | None = None, repeats: int = 1) -> Grid:
    """The Sweep tab's grid on this baseline (a user's model by its path): `axes` control -> values (None: the
    default grid); every other control at the page's defaults."""
    return Grid.page(card, tuple((k, tuple(v)) for k, v in (axes or {}).items()), repeats=repeats)


def sweep_choices(card: ModelCard) -> dict[str, tuple[Any, ...]]:
    """The Sweep tab's starting values: each control's values in the default grid on this baseline."""
    return page_choices(card)


def sweep_axes() -> list[tuple[str, bool, list[Control]]]:
    """The Sweep tab's choices, as the sidebar's sections: each technique's controls and the grid's default axes."""
    return sections()


def sweep_estimate(card: ModelCard, axes: dict[str, list[Any]] | None = None, repeats: int = 1) -> Estimate:
    """What the Sweep tab's grid will cost before it starts: the runs stored already, and the seconds the rest take
    on this machine, from this model's runs measured so far (ValueError for a grid a technique refuses)."""
    recipes = sweep_grid(card, axes, repeats).recipes()
    measured = cached_results(card["architecture"], card["dataset"], None if _committed(card) else card.get("path"))
    from explorer.run import runner, scheduler

    return estimate(recipes, measured, cache().stored(), workers=max(1, scheduler.cores() // runner.train_threads()))


def _committed(card: ModelCard) -> bool:
    return card.get("name") == f"{card['architecture']}-{card['dataset']}"


def sweep(card: ModelCard, axes: dict[str, list[Any]], repeats: int = 1,
          progress: SweepProgress | None = None) -> pd.DataFrame:
    """The Sweep tab's grid on this baseline, through the cache."""
    return run_sweep(sweep_grid(card, axes, repeats).recipes(), progress=progress, cache=cache())


def artifact(key: str, name: str) -> bytes | None:
    """A stored artifact's bytes, checked against the cache manifest as they are served."""
    return cache().artifact(key, name)


def retime_wait_words() -> str | None:
    """Why a disturbed figure is not re-timed now, where the machine is too busy for it: the load and what it must
    fall below; None where a re-time may run."""
    from explorer.run import retime, scheduler

    try:
        load1 = os.getloadavg()[0]
    except OSError:
        return None
    cores = scheduler.cores()
    if retime.quiet_enough(load1, cores):
        return None
    return (f"A speed-up shown as \"timing disturbed\" is timed again once the machine is quieter: the one-minute "
            f"load average is {load1:.1f} now, and a re-time waits until it is below {cores} (the cores the "
            "explorer may use). Other programs, a sweep or the background measurements keep it up.")


def sensitivity(result: RunResult, compute: bool = False) -> dict[str, float | None] | None:
    """Per-layer sensitivity of a cached run: stored figures, or computed now when `compute`."""
    c = cache()
    key = result.get("key")
    if not key or result.get("format") == "onnx":
        return None
    got = c.artifact(key, sens.FILE)
    if got is not None or not compute:
        return None if got is None else sens.from_bytes(got)
    blob = c.artifact(key, FILES["packed"])
    if blob is None:
        raise ValueError(f"run {key} has no intact packed file in the cache; run it again")
    values = sens.layer_sensitivity(Recipe.from_dict(result["recipe"]), blob)
    c.attach(key, sens.FILE, sens.to_bytes(values))
    return values


def forgets(result: RunResult, base_result: RunResult, limit: int = 24) -> dict[str, Any] | None:
    """What the run forgets against its baseline, from the predictions both stored (no compute): per-class
    change, the confusion-matrix change, and the test images whose prediction flipped (at most `limit` of
    each way, as arrays in [0, 1] with a caption each). None when either run kept no predictions."""
    import numpy as np

    c = cache()
    raw = [c.artifact(r.get("key") or "", "predictions.npy") if r.get("key") else None for r in (result, base_result)]
    run_raw, base_raw = raw
    if run_raw is None or base_raw is None:
        return None
    run_pred, base_pred = load_predictions(run_raw), load_predictions(base_raw)
    card = baselines.read_card(Recipe.from_dict(result["recipe"]).checkpoint_path)
    data = baselines.baseline_data(card)
    y = data.test.y.numpy()
    # class names are a user's folder names (an uploaded zip's): text in the charts, never plotly's HTML
    classes = [markup.chart(k) for k in card.get("classes") or data.classes]
    f = compute(y, base_pred, run_pred, classes)
    mean = np.asarray(data.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(data.std, dtype=np.float32)[None, :, None, None]

    def pictures(idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
        idx = idx[:limit]
        images = np.clip(data.test.x[idx].numpy() * std + mean, 0.0, 1.0)
        captions = [f"{classes[y[i]]}<br>was {classes[base_pred[i]]}, now {classes[run_pred[i]]}" for i in idx]
        return images, captions

    return {"forgets": f, "classes": classes, "lost": pictures(f.lost), "gained": pictures(f.gained),
            "test_samples": len(y)}


def stored_result(key: str) -> RunResult | None:
    """A stored RunResult by its key (checked), for the sweet spot's downloads and summary."""
    return cache().peek(key)


def controls_for(recipe: dict[str, Any], card: ModelCard) -> dict[str, Any] | None:
    """The sidebar settings that give this recipe on this baseline, or None where the sidebar cannot say it."""
    return from_recipe(recipe, card)


# (format, run, model, what ships, the runs drawn, the recipe) -> the summary's bytes, the latest few
_summaries: dict[tuple[str, str | None, str, str, int, str], bytes] = {}


def _summary(fmt: str, result: RunResult, frame: pd.DataFrame, name: str, ship: str) -> bytes:
    """A summary's bytes, made once for what it shows. The page hands the bytes to its download button as it
    draws it, so the file exists when the button is pressed (a file made only on the click can be gone by then:
    the page's periodic refreshes replace it)."""
    from explorer.app import summary

    drawn = int(pd.util.hash_pandas_object(frame.astype(str), index=False).sum()) if len(frame) else 0
    key = (fmt, result.get("key"), name, ship, drawn, json.dumps(result.get("recipe"), sort_keys=True))
    with _frames_lock:
        data = _summaries.get(key)
    if data is None:
        data = summary.png(result, frame, name, ship) if fmt == "png" else \
            summary.page(result, frame, name, ship).encode()
        with _frames_lock:
            while len(_summaries) >= 8:
                _summaries.pop(next(iter(_summaries)))
            _summaries[key] = data
    return data


def summary_png(result: RunResult, frame: pd.DataFrame, name: str, ship: str = SHIP_DEFAULT) -> bytes:
    return _summary("png", result, frame, name, ship)


def summary_html(result: RunResult, frame: pd.DataFrame, name: str, ship: str = SHIP_DEFAULT) -> bytes:
    return _summary("html", result, frame, name, ship)


class Background:
    """The server process's background work, in one place: the queue of runs pages asked for (explorer.run.jobs)
    and the landscapes that measure the open models' grids (explorer.run.landscape), each started on first use.
    `shutdown` stops both and lets the next use start them afresh (a test ends its page's work with it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._board: Board | None = None
        self._landscapes: Landscapes | None = None

    def board(self) -> Board:
        with self._lock:
            if self._board is None:
                self._board = Board(cache, run_key, alive=page_open)
            return self._board

    def landscapes(self) -> Landscapes | None:
        if not settings.get("EXPLORER_LANDSCAPE"):
            return None
        with self._lock:
            if self._landscapes is None:
                self._landscapes = Landscapes(cache, run_key, settings.get("EXPLORER_LANDSCAPE_IDLE_S"),
                                              asked=_asked, page_waiting=lambda: self.board().page_waiting())
            return self._landscapes

    def shutdown(self) -> None:
        """Cancel every run and stop the landscapes; what was going ends at its next safe point."""
        with self._lock:
            board, self._board = self._board, None
            scapes, self._landscapes = self._landscapes, None
        if board is not None:
            board.stop()
        if scapes is not None:
            scapes.stop()


BACKGROUND = Background()


def page_open(session: str) -> bool:
    """Whether the page `session` ('<page id>@<Streamlit's session id>') is connected now; True for a session of
    another form and outside a Streamlit server."""
    page, at, streamlit_id = session.partition("@")
    try:
        from streamlit.runtime import Runtime
    except ImportError:
        return True
    return not (at and streamlit_id and Runtime.exists()) or Runtime.instance().is_active_session(streamlit_id)


def board() -> Board:
    """The server process's queue of runs pages asked for (explorer.run.jobs), started on first use."""
    return BACKGROUND.board()


def shutdown() -> None:
    """Stop the server process's background work (the run board and the landscapes)."""
    BACKGROUND.shutdown()


def default_recipe() -> Recipe | None:
    """The configuration a first visitor's page opens on: the default model (default_baseline) at the default
    settings, the same recipe its sidebar builds; None where no baseline can be opened."""
    start_up()
    cards = list_baselines()
    if not cards:
        return None
    names = [c["name"] for c in cards]
    card = cards[names.index(default_baseline(names))]
    return build({**DEFAULTS, "baseline": card["name"]}, card)


def start_default() -> str | None:
    """Queue the default configuration and its baseline on the run board before any page asks (the server's
    start-up, explorer.app.serve): the first visitor's page then finds its figures computed or on the way. Returns
    the run's key, or None where there is no default to compute."""
    recipe = default_recipe()
    if recipe is None:
        return None
    b = board()
    job = b.submit(recipe, STARTUP)
    if recipe.steps:
        b.submit(baseline_recipe(recipe), STARTUP, COMPARISON)
    if (control := control_recipe(recipe)) is not None:
        b.submit(control, STARTUP, COMPARISON)
    return job.key


def _asked(key: str) -> bool:
    """Whether a page's run board is computing (or about to compute) this configuration itself."""
    job = board().job(key)
    return job is not None and not job.finished


def landscapes() -> Landscapes | None:
    """The background landscapes (explorer.run.landscape), or None where EXPLORER_LANDSCAPE=0."""
    return BACKGROUND.landscapes()


@_once_per_pass
def landscape_status(card: ModelCard, controls: dict[str, Any]) -> dict[str, Any] | None:
    """This model's background measurement, which the call keeps going (a page still looks at it), and its status;
    None for an ONNX model or where EXPLORER_LANDSCAPE=0."""
    lands = landscapes() if card.get("format") != "onnx" else None
    return None if lands is None else lands.status_of(card, controls)


def baseline_recipe(recipe: Recipe) -> Recipe:
    """The recipe's baseline with no step: the run every configuration is compared with."""
    return Recipe(model=recipe.model, dataset=recipe.dataset, checkpoint=recipe.checkpoint, seed=recipe.seed,
                  finetune_samples=recipe.finetune_samples)


def control_recipe(recipe: Recipe) -> Recipe | None:
    """The recipe's same-budget control: its baseline fine-tuned as its steps fine-tune, with no compression (None
    where it trains nothing, or trains a new model: distillation)."""
    return control_of(recipe)


def with_control(result: RunResult, control: RunResult | None) -> RunResult:
    """The run with its paired comparison against its same-budget control (`vs_control`), from the predictions
    both stored; unchanged where there is none."""
    return fair.attach(result, control, cache())
