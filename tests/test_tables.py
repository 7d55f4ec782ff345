"""The page's tables as plain pandas, read without Streamlit."""

import pandas as pd

from explorer.app.tables import LATENCY_COLS, SIZE_COLS, baseline_row, readable, sweet_spot_table

ROW = pd.Series({"technique": "prune", "status": "ok", "top1": 97.5, "top1_lo": 96.0, "top1_hi": 98.4,
                 "accuracy_delta": -0.5, "delta_lo": -1.25, "delta_hi": 0.25, "packed_bytes": 3072})


def test_readable_names_the_columns_with_units_and_sizes_in_kib():
    out = readable(pd.DataFrame([{"top1": 97.456, "packed_bytes": 3072, "significant": False, "other": 1}]))
    assert set(out.columns) == {"top-1 (%)", "a real change", "packed file (KiB)"}
    assert out["packed file (KiB)"].iloc[0] == 3.0 and out["top-1 (%)"].iloc[0] == 97.46
    assert out["a real change"].iloc[0] == "no, within noise"


def test_the_sweet_spot_table_says_each_figure_with_its_interval():
    size = next(label for label, col in SIZE_COLS.items() if col == "packed_bytes")
    table = sweet_spot_table(ROW, None, size, next(iter(LATENCY_COLS)))
    assert list(table["recommended"][:3]) == ["97.50% (96.00% to 98.40%)", "-0.50 (-1.25 to +0.25)", "3.0 KiB"]
    assert list(table["baseline"]) == ["", "0", "", "", "", ""]  # the baseline's own run is not in the frame
    # one size reference on the whole page: the baseline's fp32 checkpoint file
    with_reference = sweet_spot_table(ROW, None, size, next(iter(LATENCY_COLS)), reference=30720)
    assert with_reference["figure"][3] == "times smaller than the fp32 checkpoint"
    assert with_reference["recommended"][3] == "10.0x" and table["recommended"][3] == ""
    frame = pd.DataFrame([ROW.to_dict(), {**ROW.to_dict(), "technique": "baseline", "top1": 98.0}])
    assert baseline_row(frame)["top1"] == 98.0
