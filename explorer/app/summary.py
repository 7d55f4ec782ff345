"""A one-page summary of a configuration against its baseline, for a slide: the big numbers (times smaller,
times faster, the accuracy change with its interval), the sparsity-vs-accuracy curve with this run
marked, and the recipe. As a PNG (matplotlib, no browser needed) and as a standalone HTML page that
opens offline (plotly.js embedded)."""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import textwrap

import pandas as pd

from explorer.app import marks, plots
from explorer.app.tables import SHIP_DEFAULT, baseline_row, shipped
from explorer.compress.recipe import recipe_words, step_words
from explorer.core import words
from explorer.core.engines import B256, ORT_CPU_INT8
from explorer.models import feeding, travel
from explorer.run.collapse import words as collapse_words
from explorer.run.result import DISTURBED, RunResult, flatten, speed

ENGINE = ORT_CPU_INT8  # the deployment the headline's speed-up is for


def big_numbers(result: RunResult, ship: str = SHIP_DEFAULT, baseline: dict | None = None
                ) -> list[tuple[str, str, str]]:
    """(figure, value, the words under it) for the summary's three boxes; the size is that of what ships, against
    the baseline's own run's file of that kind (`baseline`: its sizes)."""
    sh = shipped(dict(result), ship, baseline)
    rf = sh["times_smaller"]
    times = "no smaller" if sh["no_smaller"] or rf is None else f"{rf:.1f}x"
    out = [("smaller", times, f"{sh['what'].split(' (')[0].removeprefix('the ')} (what ships) "
                              f"{plots.fmt_size(sh['bytes'])} against {sh['against']}, "
                              f"{plots.fmt_size(sh['against_bytes'])}")]
    sp = speed(result, ENGINE, B256)
    if sp.state != "pending":
        gain = speed(result, ENGINE, B256, "deployment_gain")
        value = {"within noise": "within noise", "baseline": "1.0x",
                 "disturbed": "not timed yet" if sp.text.startswith(DISTURBED.split(":")[0]) else "not shown"
                 }.get(sp.state)
        if value is None:  # faster or slower: a checked ratio
            ratio = sp.ratio if sp.ratio is not None else float("nan")
            value = f"{ratio if sp.state == 'faster' else 1 / ratio:.1f}x"
        what = {"faster": "faster", "slower": "slower", "baseline": "speed (the baseline itself)"}.get(
            sp.state, "speed-up")  # the words under a value that is not a ratio never claim a direction
        under = f"{words.engine(ENGINE, 'b256')}, against the baseline's own ONNX Runtime int8 model"
        if sp.lo is not None and sp.state != "baseline":
            under += f"; 95% interval {sp.lo:.1f}x to {sp.hi:.1f}x"
        if value == "not shown":  # timed by an earlier version, before the checks
            under = f"{words.engine(ENGINE, 'b256')}: {sp.text}"
        elif sp.state == "disturbed":  # a slide's headline says what it means, not the page's status word
            under = (f"{words.engine(ENGINE, 'b256')}: other work on the machine disturbed the timing, so no figure "
                     "is shown; the page times it again when the machine is quieter (download this summary again "
                     "then)")
        if gain.shown and gain.state != "baseline":
            under += f"; against the baseline in PyTorch fp32 (deployment gain): {gain.text}"
        out.append((what, value, under))
    vs = result.get("vs_baseline") or {}
    d = result["accuracy_delta"]
    within = vs and not vs.get("significant")
    ci = f"95% interval {vs['delta_ci'][0]:+.2f} to {vs['delta_ci'][1]:+.2f} points" if vs else ""
    if fell := result.get("collapse"):  # a guess is no accuracy change to put on a slide
        out.append(("accuracy: the model collapsed", "collapsed",
                    f"top-1 {result['accuracy']['top1']:.2f}% against {fell['chance_top1']:.2f}% for a guess among "
                    f"{fell['classes']} classes: not a measured trade-off"))
        return out
    vc = result.get("vs_control")
    if vc:  # a recipe that fine-tunes: the slide's figure is against the same training without compression
        lo, hi = vc["delta_ci"]
        out.append(("accuracy change against the same training", f"{vc['delta']:+.2f} pts",
                    f"top-1 {result['accuracy']['top1']:.2f}% against {vc['top1']:.2f}% for the baseline fine-tuned "
                    f"the same {vc['budget']} without compression; 95% interval {lo:+.2f} to {hi:+.2f} points"
                    + ("; within noise" if not vc.get("significant") else "")
                    + f"; against the untouched baseline {d:+.2f} pts" + (" (within noise)" if within else "")))
        return out
    out.append(("accuracy change", f"{d:+.2f} pts", f"top-1 {result['accuracy']['top1']:.2f}%; {ci}"
                                                    + ("; within noise" if within else "")))
    return out


def _baseline_sizes(frame: pd.DataFrame) -> dict:
    """The sizes of the baseline's own run in the table (its ONNX files are measured there), or none."""
    row = baseline_row(frame) if len(frame) else None
    if row is None:
        return {}
    return {k: int(v) for k, v in row.items() if str(k).endswith("_bytes") and pd.notna(v)}


def _controls(result: RunResult) -> pd.DataFrame:
    """The run's same-budget control as the one row the curve draws as its reference line (none: no rows)."""
    vc = result.get("vs_control")
    if not vc:
        return pd.DataFrame()
    return pd.DataFrame([{"status": "ok", "top1": vc["top1"], "top1_lo": vc["top1_ci"][0],
                          "top1_hi": vc["top1_ci"][1], "control_budget": vc["budget"]}])


def _title(result: RunResult, card_name: str) -> str:
    return f"{card_name}: {recipe_words(result['recipe'])}"


def _plain(text: str) -> str:
    """Text matplotlib draws as written: a dollar sign would start its mathematical notation."""
    return text.replace("$", r"\$")


def _fit(fig, artist, width: float, lines: int = 2, smallest: float = 10) -> None:
    """Wrap `artist`'s text and lower its font size until it fits within `width` (a share of the figure's
    width) in at most `lines` lines, measured with the figure's renderer."""
    text, renderer = artist.get_text(), fig.canvas.get_renderer()
    size = artist.get_fontsize()
    while True:
        artist.set_fontsize(size)
        for chars in range(len(text), 20, -4):
            wrapped = "\n".join(textwrap.wrap(text, chars)) or text
            if wrapped.count("\n") >= lines:
                break
            artist.set_text(wrapped)
            if artist.get_window_extent(renderer).width <= width * fig.bbox.width:
                return
        if size <= smallest:
            return
        size -= 1


def _footer(result: RunResult) -> str:
    hw = (result.get("hardware") or {}).get("cpu", "")
    return (f"{result['test_samples']:,} test images of {result['dataset']}; latency on {hw}, "
            f"{result.get('latency_threads', 1)} thread; {dt.date.today().isoformat()}; compression trade-off explorer")


def inputs(result: RunResult) -> str:
    """What the model is fed, for whoever deploys it: a model fed otherwise does not score these figures."""
    fed = feeding.feed_words_of(result)
    return f"Inputs: {fed}." if fed else "Inputs: as the model's card says."


def reproduce(result: RunResult) -> tuple[str, str]:
    """The command that computes these figures again, on any machine with the model's file, and what its FILE is."""
    return travel.command(travel.shared_of(result), travel.is_users(result["recipe"]))


def png(result: RunResult, frame: pd.DataFrame, card_name: str, ship: str = SHIP_DEFAULT) -> bytes:
    """The summary as a 1600x900 PNG."""
    import matplotlib.pyplot as plt

    fig = figure(result, frame, card_name, ship)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # the same bytes for the same summary
    plt.close(fig)
    return buf.getvalue()


def figure(result: RunResult, frame: pd.DataFrame, card_name: str, ship: str = SHIP_DEFAULT):
    """The summary's matplotlib figure, 16 x 9 inches at 100 dots per inch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(16, 9), dpi=100)
    title = fig.text(0.03, 0.97, _plain(_title(result, card_name)), fontsize=20, ha="left", va="top")
    _fit(fig, title, 0.94)
    if said := collapse_words(result):
        _fit(fig, fig.text(0.03, 0.905, _plain(said), fontsize=11, ha="left", va="top", color=marks.COLOUR,
                           weight="bold"), 0.94, lines=3, smallest=7)
    for i, (what, value, under) in enumerate(big_numbers(result, ship, _baseline_sizes(frame))):
        ax = fig.add_axes((0.03 + i * 0.32, 0.66, 0.3, 0.22))
        ax.axis("off")
        ax.add_patch(matplotlib.patches.FancyBboxPatch((0, 0), 1, 1, boxstyle="round,pad=0.02", fc="#f2f5fa",
                                                       ec="#c9d3e3", transform=ax.transAxes))
        ax.text(0.5, 0.62, value, ha="center", va="center", fontsize=40, weight="bold", color="#1f3b6d")
        ax.text(0.5, 0.3, what, ha="center", va="center", fontsize=16)
        ax.text(0.5, 0.1, "\n".join(textwrap.wrap(_plain(under), 64)), ha="center", va="center", fontsize=9,
                color="#555555")
    ax = fig.add_axes((0.06, 0.12, 0.55, 0.46))
    _curve(ax, frame, result)
    side = fig.add_axes((0.65, 0.12, 0.33, 0.46))
    side.axis("off")
    steps = "\n".join(f"{i}. " + "\n   ".join(textwrap.wrap(step_words(st), 48))
                      for i, st in enumerate(result["recipe"]["steps"], 1)) or "no compression step"
    recipe = "\n".join(textwrap.wrap(json.dumps(result["recipe"]["steps"], separators=(",", ":")), 60))
    side.text(0, 1, "Recipe\n\n" + steps, va="top", fontsize=12)
    side.text(0, 0.5, "\n".join(textwrap.wrap(_plain(inputs(result)), 56)), va="top", fontsize=10)
    side.text(0, 0.4, "\n".join(textwrap.wrap(_plain("Reproduce: {}{}".format(*reproduce(result))), 72))
              + "\nSteps as JSON:\n"
              + recipe[:1400], va="top", family="monospace", fontsize=7, color="#333333")
    fig.text(0.03, 0.03, _plain(_footer(result)), fontsize=9, color="#555555")
    return fig


def _curve(ax, frame: pd.DataFrame, result: RunResult) -> None:
    ok = frame[(frame.get("status") == "ok")] if "status" in frame.columns else frame
    ok, fell = marks.split(ok.dropna(subset=[c for c in ("top1", "sparsity_requested") if c in ok.columns]))
    if not ok.empty and ({"scheme", "bits"} & set(ok.columns)):
        fams = list(plots.families(ok))  # one line per configuration family, styled as on the page
        style = plots.series_styles(name for name, _ in fams)
        for name, part in fams:
            err = None
            if {"top1_lo", "top1_hi"} <= set(part.columns):
                err = [part["top1"] - part["top1_lo"], part["top1_hi"] - part["top1"]]
            colour, dash = style[name]
            ax.errorbar(part["sparsity_requested"], part["top1"], yerr=err, marker="o", capsize=3,
                        label=_plain(name), color=colour, ls=plots.MPL_DASHES[dash])
    base = result["baseline_accuracy"]["top1"]
    ax.axhline(base, ls=":", color="grey", label=f"baseline {base:.2f}%")
    vc = result.get("vs_control")
    if vc:  # what a fine-tuned run must beat for its compression to count as a gain
        ax.axhspan(*vc["top1_ci"], color=plots.CONTROL_COLOUR, alpha=0.1, lw=0)
        ax.axhline(vc["top1"], ls="--", color=plots.CONTROL_COLOUR,
                   label=_plain(f"baseline fine-tuned {vc['budget']}, no compression: {vc['top1']:.2f}%"))
    sp = flatten(result)["sparsity_requested"]  # as the pruning step says it (n:m: 1 - n/m)
    star = {"marker": "*", "markersize": 22, "color": "crimson", "ls": "none", "clip_on": False,
            "label": "this configuration"}
    if not result.get("collapse"):
        ax.plot([sp], [result["accuracy"]["top1"]], **star)
    low = ax.get_ylim()[0]  # collapsed runs sit on the axis' lower edge, apart from the curves (explorer.app.marks)
    if not fell.empty:
        ax.plot(fell["sparsity_requested"], [low] * len(fell), marker="x", markersize=12, color=marks.COLOUR,
                ls="none", clip_on=False, label=_plain(marks.LEGEND))
    if result.get("collapse"):
        ax.plot([sp], [low], **star)
    ax.set_ylim(bottom=low)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("top-1 accuracy (%), bars: 95% interval")
    ax.set_title("Sparsity vs accuracy", loc="left")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)


def page(result: RunResult, frame: pd.DataFrame, card_name: str, ship: str = SHIP_DEFAULT) -> str:
    """The summary as a standalone HTML page."""
    numbers = big_numbers(result, ship, _baseline_sizes(frame))
    boxes = "".join(f"<div class=box><div class=v>{html.escape(v)}</div><div class=w>{html.escape(w)}</div>"
                    f"<div class=u>{html.escape(u)}</div></div>" for w, v, u in numbers)
    fig = plots.sparsity_accuracy(frame, result.get("key"), controls=_controls(result))
    # outside Streamlit's theme, plotly leaves no room for tick labels by default: grow the margins to fit them,
    # and keep the axis titles clear of the ticks
    fig.update_layout(margin={"l": 80, "b": 70, "t": 60, "r": 20})
    fig.update_xaxes(automargin=True, title_standoff=12)
    fig.update_yaxes(automargin=True, title_standoff=12)
    curve = fig.to_html(full_html=False, include_plotlyjs="inline")
    said = collapse_words(result)
    warning = f'<p style="color:{marks.COLOUR};font-weight:bold">{html.escape(said)}</p>' if said else ""
    recipe = html.escape(json.dumps(travel.shared_of(result), indent=2))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(_title(result, card_name))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}.row{{display:flex;gap:1em}}
.box{{flex:1;background:#f2f5fa;border:1px solid #c9d3e3;border-radius:8px;padding:1em;text-align:center}}
.v{{font-size:2.6em;font-weight:bold;color:#1f3b6d}}.w{{font-size:1.2em}}.u{{color:#555;font-size:.85em}}
pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>{html.escape(_title(result, card_name))}</h1>{warning}<div class=row>{boxes}</div>{curve}
<h2>Recipe</h2><p>{html.escape(inputs(result))}</p>
<p>Reproduce with <code>{html.escape(reproduce(result)[0])}</code>{html.escape(reproduce(result)[1])}.</p>
<pre>{recipe}</pre>
<p style="color:#555">{html.escape(_footer(result))}</p></body></html>"""
