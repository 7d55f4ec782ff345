"""How the charts mark a run whose model collapsed (explorer.run.collapse): apart from the measured runs, never a
point of a curve or a front. A collapsed run's top-1 is a guess, not a trade-off: drawn at its figure and joined
into a line it reads as a cliff ("70% is the limit"), and it would stretch the accuracy axis until every measured
difference looks flat. So it is a cross on the lower edge of the accuracy axis, labelled, its figures in the
tooltip. Pure functions of DataFrames, for the page's plotly figures and the summary's matplotlib curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from explorer.app.metrics import collapsed_rows

LEGEND = "collapsed: the model guesses (not a measured trade-off)"
COLOUR = "#b22222"


def split(ok: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the measured runs, the collapsed ones)."""
    fell = collapsed_rows(ok)
    return ok[~fell], ok[fell]


def add_collapsed(fig: go.Figure, fell: pd.DataFrame, x: str, floor: float, hover: np.ndarray) -> None:
    """The collapsed runs as crosses at `floor` (the accuracy axis' lower edge), each saying so; `hover` holds the
    tooltips' rows as plots._hover makes them."""
    if fell.empty:
        return
    fig.add_trace(go.Scatter(
        x=fell[x], y=np.full(len(fell), floor), mode="markers+text", name=LEGEND, text=["collapsed"] * len(fell),
        textposition="top center", cliponaxis=False, marker={"symbol": "x", "size": 13, "color": COLOUR},
        customdata=np.column_stack([hover, fell["top1"].to_numpy()]),
        hovertemplate="<b>%{customdata[1]}</b><br>collapsed: top-1 %{customdata[3]:.2f}%, the model guesses; "
                      "not a measured trade-off<extra>%{customdata[0]}</extra>"))


def floor(axis: list[float]) -> float:
    """Where the crosses sit: just above the accuracy axis' lower edge."""
    return axis[0] + 0.02 * (axis[1] - axis[0])
