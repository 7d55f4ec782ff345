"""Command line: `python -m explorer train|data ...`.

Errors print one line on stderr and exit non-zero; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explorer.core import plugins, scratch, settings
from explorer.core.engines import B256, ORT_CPU_INT8, lat_col
from explorer.core.errors import bad_value, first_line
from explorer.run.cache import RunCache
from explorer.run.collapse import words as collapse_words
from explorer.run.result import FILES, RunResult, disturbed_figures, speed, speed_with_interval

# Each command imports the heavy parts it needs (torch, the models, plotting) when it runs, so `--help`,
# `cache ...` and `data ...` answer at once; everything imported above is light.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


class ProgressLine:
    """One self-overwriting progress line on stderr (a plain line per update when not a terminal)."""

    def __init__(self, label: str, stream=None):
        self.label, self.stream, self.t0, self.last = label, stream or sys.stderr, time.perf_counter(), -1.0

    def __call__(self, fraction: float, message: str) -> None:
        tty = self.stream.isatty()
        if not tty and fraction - self.last < 0.1 and fraction < 1.0:
            return
        self.last = fraction
        elapsed = time.perf_counter() - self.t0
        line = f"{self.label}: {100 * fraction:5.1f}% {message} [{elapsed:.0f}s]"
        self.stream.write(("\r" + line) if tty else line + "\n")
        if tty and fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


TRUST_HELP = ("load a model file that is a program (TorchScript, an exported .pt2 program, a pickled module): "
              "loading it runs code from the file, so only for files whose author you trust")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m explorer", description="Compression trade-off explorer")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import your own Python module, which registers architectures or data sets (trusted code, "
                        "like the explorer itself; repeat for several; also EXPLORER_PLUGINS)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a baseline and write models/<model>-<dataset>.safetensors + card")
    t.add_argument("--model", required=True)
    t.add_argument("--dataset", default="digits")
    t.add_argument("--root", default=None, help="local dataset folder (all but digits)")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--augment-shift", type=int, default=0)
    t.add_argument("--width", type=float, default=None, help="channel width multiplier (where the model has one)")
    t.add_argument("--image-size", type=int, default=None)
    t.add_argument("--models-dir", default=None)
    t.add_argument("--finetune-samples", type=int, default=None,
                   help="recommend that compression runs fine-tune on this many training images (large data sets)")

    r = sub.add_parser("run", help="run one recipe on a committed baseline and print its result")
    r.add_argument("--recipe", required=True, help="recipe JSON file")
    r.add_argument("--json", action="store_true", help="print the whole RunResult as JSON")
    r.add_argument("--out", default=None,
                   help="also write result.json, recipe.json, the packed .xpk and the ONNX models here")
    r.add_argument("--checkpoint", default=None,
                   help="your own model file instead of the recipe's baseline; for a recipe that names its model by "
                        "sha256 (as the page hands them out), the file must hold those weights, and it is added fed as "
                        "the recipe says (without it, the model is looked for in models/ and the user models folder)")
    r.add_argument("--arch", default=None, help="architecture of a state_dict checkpoint (default: the recipe's)")
    r.add_argument("--dataset", default=None, help="dataset of --checkpoint (default: the recipe's)")
    r.add_argument("--root", default=None, help="local dataset folder for --dataset")
    r.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    r.add_argument("--no-cache", action="store_true",
                   help="compute afresh instead of through the run cache (the result is not stored)")

    am = sub.add_parser("add-model", help="add your own model (state_dict + --arch, or ONNX/TorchScript/.pt2)")
    am.add_argument("--checkpoint", required=True)
    am.add_argument("--arch", default=None,
                    help="architecture of a state_dict (.safetensors/.pt/.pth): a zoo or plugin name, or "
                         "'torchvision:<name>' / 'timm:<name>' (built by the installed library, nothing downloaded; "
                         "`models` lists them)")
    am.add_argument("--dataset", default="digits")
    am.add_argument("--root", default=None)
    am.add_argument("--image-size", type=int, default=None,
                    help="the image size the model was trained at: the data's images are resized to it")
    am.add_argument("--mean", default=None, metavar="M[,M,M]",
                    help="the per-channel mean the model was trained with, after scaling pixels to [0, 1] (with "
                         "--std; default: the training split's own, which the card states; 0 with --std 1 feeds the "
                         "[0, 1] pixels as they are)")
    am.add_argument("--std", default=None, metavar="S[,S,S]", help="the per-channel standard deviation (with --mean)")
    ls = sub.add_parser("models", help="list the architectures --arch takes (zoo, plugins, torchvision, timm)")
    ls.add_argument("search", nargs="?", default="", help="only names containing this text")
    am.add_argument("--name", default=None)
    am.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    am.add_argument("--replace", action="store_true", help="replace the model already added under --name")

    # the sweep's own flags, each technique's controls among them, come from the registry once the plugins are in
    sub.add_parser("sweep", add_help=False, help="run a grid of recipes through the cache and write a results CSV "
                                                 "(`sweep --help` lists every technique's flags)")

    rp = sub.add_parser("report", help="standalone HTML report of a sweep's CSV")
    rp.add_argument("results")
    rp.add_argument("--html", required=True)
    rp.add_argument("--title", default="Compression trade-offs")

    rc = sub.add_parser("recommend", help="the sweet spot of a sweep's CSV under constraints")
    rc.add_argument("results")
    rc.add_argument("--max-drop", type=float, default=None, help="largest top-1 loss in points")
    rc.add_argument("--size-budget-kb", type=float, default=None)
    rc.add_argument("--latency-budget-ms", type=float, default=None)
    rc.add_argument("--objective", default="smallest", help="smallest, fastest or most_accurate")
    rc.add_argument("--size", default="packed_bytes", help="size column: packed_bytes, gzip_bytes, onnx_int8_bytes ...")
    rc.add_argument("--latency", default=lat_col(ORT_CPU_INT8, B256), help="latency column")
    rc.add_argument("--confidence", type=float, default=0.95,
                    help="how sure the pick must be (default 0.95); 0 judges by point estimates alone")

    ca = sub.add_parser("cache", help="inspect or clear the run cache")
    ca.add_argument("action", choices=["ls", "verify", "clear"])
    ca.add_argument("--fix", action="store_true", help="verify: remove bad entries")

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    e = dsub.add_parser("export", help="write the exact preprocessed tensors the explorer evaluates on")
    e.add_argument("--dataset", default="digits")
    e.add_argument("--root", default=None)
    e.add_argument("--split", default="test")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--image-size", type=int, default=None)
    e.add_argument("--out", required=True)
    f = dsub.add_parser("fetch", help="download a data set with torchvision (needs the internet)")
    f.add_argument("name", help="fashion-mnist or mnist")
    f.add_argument("--dir", default=None, help="where to put it (default: data/<name>/, where the explorer looks)")
    return p


@command("train")
def _train(a: argparse.Namespace) -> int:
    from explorer.compress.recipe import check_finetune_samples
    from explorer.core.train import TrainConfig
    from explorer.models.baselines import MODELS_DIR, train_baseline

    if a.finetune_samples is not None:  # the card keeps it for every later run: refused here, before training
        check_finetune_samples(a.finetune_samples, "--finetune-samples")
    cfg = TrainConfig(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, weight_decay=a.weight_decay, seed=a.seed,
                      augment_shift=a.augment_shift)
    kw = {} if a.width is None else {"width": a.width}
    card = train_baseline(a.model, a.dataset, root=a.root, cfg=cfg, model_kwargs=kw, image_size=a.image_size,
                          models_dir=a.models_dir or MODELS_DIR, progress=ProgressLine(f"train {a.model}"),
                          finetune_samples=a.finetune_samples)
    print(json.dumps({k: card[k] for k in ("name", "accuracy", "params", "file_bytes")}, indent=2))
    return 0


@command("run")
def _run(a: argparse.Namespace) -> int:
    from explorer.compress.recipe import Recipe
    from explorer.models.travel import resolve, shared_of

    # the recipe's model on this machine: by its path (older recipes), by its weights' sha256 in models/ and the user
    # models folder, or the file --checkpoint names, added fed as the recipe says
    recipe = resolve(Recipe.from_file(a.recipe), a.checkpoint, arch=a.arch, dataset=a.dataset, root=a.root,
                     trust_code=a.trust_code, on_wait=_waiting)
    progress = ProgressLine(f"run {recipe.label()}")
    if a.no_cache:
        from explorer.run.runner import run_recipe

        result = run_recipe(recipe, workdir=a.out, progress=progress)
    else:
        cache = RunCache()
        result = cache.get_or_run(recipe, progress=progress)  # one computation per key, also across commands
        if result.get("status") != "ok":
            raise RuntimeError(f"the run failed: {result.get('error')}")
        if a.out:
            _write_artifacts(cache, result["key"], Path(a.out))
    if a.out:
        (Path(a.out) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        # as the page hands it out: the model by name and sha256, not by this machine's path
        (Path(a.out) / "recipe.json").write_text(json.dumps(shared_of(result), indent=2) + "\n")
    print(json.dumps(result, indent=2) if a.json else summary(result))
    return 0


def _write_artifacts(cache, key: str, out) -> None:
    """The run's deployable files, as stored (and checked against their checksums) in the cache."""

    out.mkdir(parents=True, exist_ok=True)
    for kind in ("packed", "onnx", "onnx_int8"):
        data = cache.artifact(key, FILES[kind])
        if data is not None:
            (out / FILES[kind]).write_bytes(data)


def _kib(n) -> str:
    return "n/a" if n is None else f"{n / 1024:,.1f} KiB"


def _num(n) -> str:
    return "n/a" if n is None else f"{n:,}"


def _lat(entry: Mapping[str, Any]) -> str:
    if not entry.get("available"):
        return "not available"
    ci = entry.get("ci_ms")
    within = f", 95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci else ""
    return f"{entry['median_ms']:.3f} ms (p90 {entry['p90_ms']:.3f}{within})"


def _speedup(result: RunResult, engine: str, batch: str, figure: str) -> str:
    return speed_with_interval(speed(result, engine, batch, figure))


def summary(result: RunResult) -> str:
    """What a person reads: accuracy and delta, sparsity, sizes, latency, per-layer table, seconds."""
    acc, base, sz, rf = result["accuracy"], result["baseline_accuracy"], result["size"], result["reduction_factor"]
    ci = result.get("accuracy_ci") or {}
    vs = result.get("vs_baseline") or {}
    top1_ci = f" (95% CI {ci['top1'][0]:.2f}-{ci['top1'][1]:.2f})" if "top1" in ci else ""
    paired = (f"; paired 95% CI {vs['delta_ci'][0]:+.2f} to {vs['delta_ci'][1]:+.2f}, {vs['baseline_only']} images "
              f"lost, {vs['run_only']} gained, exact McNemar p={vs['p_value']:.3g}: "
              f"{'a real change' if vs['significant'] else 'within noise'}") if vs else ""
    lines = [f"{result['label']}  ({result['model']} on {result['dataset']}, {result['test_samples']} test images)",
             f"  top-1 {acc['top1']:.2f}%{top1_ci}  top-3 {acc['top3']:.2f}%  top-5 {acc['top5']:.2f}%",
             f"  delta {result['accuracy_delta']:+.2f} points vs {base['top1']:.2f}%{paired}",
             *([f"  COLLAPSED: {fell}"] if (fell := collapse_words(result)) else []),
             f"  parameters {result['params']:,} ({result['nonzero_params']:,} non-zero), weight sparsity "
             f"{result['sparsity']:.1%}, MACs {_num(result.get('macs'))}",
             "  sizes: " + ", ".join(f"{k.replace('_bytes', '')} {_kib(sz.get(k))}"
                                     + (f" ({rf['vs_fp32_file'][k]:.2f}x)" if k in rf["vs_fp32_file"] else "")
                                     for k in ("file_bytes", "gzip_bytes", "packed_bytes", "onnx_bytes",
                                               "onnx_int8_bytes"))]
    latency: Mapping[str, Mapping[str, Mapping[str, Any]]] = result.get("latency") or {}
    for engine, per_batch in latency.items():
        if any(v.get("available") for v in per_batch.values()):
            lines.append(f"  latency {engine}: " + ", ".join(f"{b} {_lat(v)}" for b, v in per_batch.items()))
        for figure, against, figures in (
                ("speedup", "speed-up vs the baseline in the same engine", result.get("speedup") or {}),
                ("deployment_gain", "deployment gain vs the baseline in PyTorch fp32",
                 result.get("deployment_gain") or {})):
            if per := figures.get(engine):
                lines.append(f"    {against}: " + ", ".join(f"{b} {_speedup(result, engine, b, figure)}" for b in per))
    if result.get("hardware"):
        from explorer.measure.hardware import describe

        lines.append(f"  hardware: {describe(result['hardware'])}")
    if disturbed := disturbed_figures(result):
        q = result.get("timing_quality") or {}
        how = q.get("stopped") or f"after {q.get('retimes', 0)} re-times"
        load = (q.get("load_average") or {}).get("before") or ["?"]
        lines.append(f"  the machine was too busy to time cleanly (load average {load[0]}): {len(disturbed)} speed "
                     f"figures failed their checks ({how}) and show no number: {', '.join(disturbed)}")
    for layer in result["layers"]:
        lines.append(f"    {layer['layer']:<24} {layer['shape']:<14} sparsity {layer['sparsity']:6.1%}  "
                     f"distinct {layer['distinct']:>6}  bits {layer['bits']:>2}  "
                     f"packed {_num(layer['packed_bytes']):>8} B")
    steps = ", ".join(f"{s['kind']} {s['seconds']:.2f}s" for s in result["timings"]["steps"])
    lines.append(f"  seconds: prepare {result['timings']['total_prepare']:.2f} ({steps}), "
                 f"latency {result['timings'].get('latency', 0):.2f}")
    lines += [f"  note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def sweep_parser() -> argparse.ArgumentParser:
    """The sweep's flags: the grid's own, then one per control of every registered technique (plugins' included),
    drawn from the techniques' own data."""
    from explorer.run.controls import all_controls
    from explorer.run.grid import default_axes

    w = argparse.ArgumentParser(prog="python -m explorer sweep",
                                description="Run a grid of recipes through the cache and write a results CSV.")
    w.add_argument("--model", default="digits_cnn")
    w.add_argument("--dataset", default="digits")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--repeats", type=int, default=1,
                   help="run each recipe with seeds SEED..SEED+K-1 (fine-tuning order, calibration sample, k-means "
                        "start); tables then show mean and spread across seeds")
    w.add_argument("--backend", default="local", help="local (process pool) or ray")
    w.add_argument("--workers", type=int, default=None)
    w.add_argument("--out", required=True, help="results CSV")
    w.add_argument("--no-latency", action="store_true", help="skip latency timing")
    axes = dict(default_axes())
    g = w.add_argument_group("the grid", "comma-separated values of each technique's controls; a control not given "
                                          "takes its default, and a technique not given is off unless the default "
                                          "grid varies it")
    for ctrl in all_controls():
        spelled = ", ".join([*map(str, ctrl.allowed()), *(f"{k} = {v}" for k, v in ctrl.aliases.items())]) \
            if ctrl.options or isinstance(ctrl.default, bool) else f"from {ctrl.lo:g} to {ctrl.hi:g}"
        default = ",".join(map(str, axes[ctrl.name])) if ctrl.name in axes else None
        box: dict[str, Any] = {"nargs": "?", "const": "1"} if isinstance(ctrl.default, bool) else {}  # alone: on
        g.add_argument(ctrl.cli, dest=f"control_{ctrl.name}", metavar="VALUES", default=default, **box,
                       help=f"{ctrl.title} ({spelled})" + (f"; default {default}" if default else ""))
    return w


@command("sweep")
def _sweep(a: argparse.Namespace) -> int:
    from explorer.run.executor import run_sweep
    from explorer.run.grid import Grid

    if a.workers is not None and a.workers < 1:  # run_sweep reads a 0 as "the default"
        raise bad_value("--workers", a.workers, "a whole number >= 1, or omitted for the default")
    asked = {k[len("control_"):]: parse_list(v, str, k[len("control_"):].replace("_", "-"))
             for k, v in vars(a).items() if k.startswith("control_") and v is not None}
    grid = Grid.of(a.model, a.dataset, seed=a.seed, repeats=a.repeats, values=asked)
    recipes = grid.recipes()
    t0 = time.perf_counter()

    def progress(done: int, total: int, eta: float | None) -> None:
        left = "" if eta is None else f", about {eta:.0f}s left"
        sys.stderr.write(f"sweep: {done}/{total} runs{left} [{time.perf_counter() - t0:.0f}s]\n")
        sys.stderr.flush()

    df = run_sweep(recipes, backend=a.backend, workers=a.workers, progress=progress, latency=not a.no_latency)
    df.to_csv(a.out, index=False)
    failed = int((df["status"] != "ok").sum())
    hits = int(df["cache_hit"].fillna(False).astype(bool).sum())
    print(f"{len(df)} runs ({hits} from the cache, {failed} failed) in {time.perf_counter() - t0:.1f}s -> {a.out}")
    return 0


@command("report")
def _report(a: argparse.Namespace) -> int:
    from explorer.app.report import read_results, write_report

    df = read_results(a.results)
    n = write_report(df, a.html, title=a.title, forgets=_forgets_of_sweet_spot(df))
    print(f"wrote {a.html} ({n / 1024:,.0f} KiB, opens offline)")
    return 0


def _forgets_of_sweet_spot(df):
    """What the report's sweet spot forgets against its baseline, from the predictions in the run cache (None
    when either run is not there: a report never computes)."""
    from explorer.app import service
    from explorer.app.metrics import sweet_spot
    from explorer.compress.recipe import Recipe
    from explorer.run import runner

    ok = df[df["status"] == "ok"]
    pick = sweet_spot(ok, max_drop=1.0, objective="smallest") if len(ok) and "key" in ok.columns else None
    if pick is None or pick.row is None:
        return None
    try:
        r = Recipe.from_json(pick.row["recipe_json"])
        base_key = runner.run_key(Recipe(model=r.model, dataset=r.dataset, checkpoint=r.checkpoint, seed=r.seed))
    except ValueError:
        return None
    cache = service.cache()
    run, base = cache.get(str(pick.row["key"])), cache.get(base_key)
    return service.forgets(run, base) if run and base else None


@command("recommend")
def _recommend(a: argparse.Namespace) -> int:
    from explorer.app.metrics import sweet_spot
    from explorer.app.report import read_results

    if not 0 <= a.confidence < 1:  # 0 is documented as "point estimates alone" (None below); NaN fails too
        raise bad_value("--confidence", a.confidence, "0 (point estimates alone) or a fraction below 1")
    if a.size_budget_kb is not None and not 0 < a.size_budget_kb < float("inf"):  # sweet_spot sees bytes
        raise bad_value("--size-budget-kb", a.size_budget_kb, "a positive number of KiB")
    df = read_results(a.results)
    for col in (a.size, a.latency):
        if col not in df.columns:
            raise ValueError(f"column {col!r} is not in {a.results}; columns: {', '.join(df.columns)}")
    pick = sweet_spot(df, max_drop=a.max_drop, objective=a.objective, size_col=a.size, latency_col=a.latency,
                      size_budget=None if a.size_budget_kb is None else a.size_budget_kb * 1024,
                      latency_budget=a.latency_budget_ms, confidence=a.confidence or None)
    if pick.row is None:
        print(f"error: {pick.reason}", file=sys.stderr)
        return 1
    print(pick.reason)
    if pick.point_row is not None:
        print(f"by point estimates alone (not {pick.confidence:.0%} sure): {pick.point_row.get('label')}")
    print(pick.row["recipe_json"])
    return 0


@command("cache")
def _cache(a: argparse.Namespace) -> int:
    cache = RunCache()
    if a.action == "ls":
        for e in cache.entries():
            print(f"{e['key']}  {e.get('status', '?'):6}  {e['bytes'] / 1024:10,.1f} KiB  {e.get('last_used', '')}  "
                  f"{e.get('label', '')}")
        print(f"{cache.total_bytes() / 2**20:,.1f} MiB in {cache.root}", file=sys.stderr)
    elif a.action == "verify":
        bad = cache.verify(fix=a.fix)
        for b in bad:
            print(f"{b['key']}: {b['problem']}")
        print(f"{len(bad)} bad entr{'y' if len(bad) == 1 else 'ies'}{' removed' if a.fix and bad else ''}",
              file=sys.stderr)
        return 1 if bad and not a.fix else 0
    else:
        print(f"removed {cache.clear()} entries from {cache.root}")
    return 0


def _waiting(ahead: int) -> None:
    from explorer.models.sandbox import waiting

    print(waiting(ahead), file=sys.stderr, flush=True)


@command("add-model")
def _add_model(a: argparse.Namespace) -> int:
    from explorer.core.preprocessing import parse_values
    from explorer.models.feeding import feed_words
    from explorer.models.user import add_model

    card = add_model(a.checkpoint, arch=a.arch, dataset=a.dataset, root=a.root, name=a.name,
                     image_size=a.image_size, trust_code=a.trust_code, replace=a.replace,
                     mean=parse_values(a.mean, "--mean"), std=parse_values(a.std, "--std"),
                     file_name=True, on_wait=_waiting)  # the operator's own file: its name is kept in the card
    acc = card["accuracy"]
    verb = "already added as" if card.get("reused") else "added"
    print(f"{verb} {card['name']} ({card['architecture']}, {card['params']:,} parameters) at {card['path']}: "
          f"top-1 {acc['top1']:.2f}% on {card['test_samples']} {card['dataset']} test images")
    if (fed := feed_words(card)) is not None:
        print(f"fed {fed}")
    if card.get("unsupported_reason"):
        print(f"note: {card['unsupported_reason']}")
    return 0


@command("models")
def _models(a: argparse.Namespace) -> int:
    from explorer.core.zoo import all_model_names, model_entry

    names = [n for n in all_model_names() if a.search.lower() in n.lower()]
    if not names:
        raise ValueError(f"no architecture name contains {a.search!r}")
    for n in names:
        print(n if ":" in n else f"{n}\t{model_entry(n).description}")
    return 0


@command("data")
def _data(a: argparse.Namespace) -> int:
    if a.data_command == "fetch":
        from explorer.core.data import fetch

        where = fetch(a.name, a.dir)
        print(f"{a.name} is in {where}; the explorer finds it there without --root")
        return 0
    from explorer.core.data import export_split, load_dataset

    bundle = load_dataset(a.dataset, a.root, seed=a.seed, image_size=a.image_size)
    arrays = export_split(bundle, a.split)
    np.savez(a.out, x=arrays["x"], y=arrays["y"])
    print(f"wrote {a.out}: x {arrays['x'].shape} float32, y {arrays['y'].shape} int64", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    if args.command != "sweep" and rest:
        parser.parse_args(argv)  # argparse's own message for the flags it does not know
    try:
        settings.check_all()  # every setting, before any work: one line naming a bad one
        plugins.add_to_environment(args.plugin)  # the processes this one starts import them too
        plugins.load()  # the operator's own modules: one that fails to import is one line, before any work
        if args.command == "sweep":  # its flags are the registered techniques', plugins' included
            sweep_parser().parse_args(rest, namespace=args)
        scratch.clean()  # scratch folders that killed processes left behind
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; the traceback only on request
        if args.debug:
            raise
        kind = "" if isinstance(e, ValueError) else f"{type(e).__name__}: "
        msg = first_line(e, 1000)
        print(f"error: {kind}{msg}", file=sys.stderr)
        return 2


def parse_list(text: str, kind: type, name: str) -> tuple:
    """'0,0.5,0.9' -> (0.0, 0.5, 0.9); a bad item names the option and the value."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{name} is empty: give comma-separated values")
    out: list[str | int | float] = []
    for t in items:
        if kind is str:
            out.append(t)
            continue
        try:
            out.append(int(t) if kind is int else float(t))
        except ValueError:
            raise bad_value(name, t, f"a comma-separated list of {kind.__name__}s") from None
    return tuple(out)
