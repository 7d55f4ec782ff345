"""plotly figures: pure functions of DataFrames, shared by the UI and the HTML report."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go


def params_per_layer(layers: pd.DataFrame, title: str = "Parameters per layer") -> go.Figure:
    """Bar chart of parameters per weighted layer (seed 004: find where the size lives)."""
    fig = px.bar(layers, x="layer", y="params", color="type", hover_data=["shape", "params"], title=title)
    fig.update_layout(xaxis_title="layer", yaxis_title="parameters", xaxis_tickangle=-45,
                      legend_title_text="layer type", margin={"t": 50, "b": 10})
    return fig
