import numpy as np
import pandas as pd
import pytest

from explorer.app.metrics import normalized_ad_rf, pareto_front, sweet_spot

# Seed 001 (Ishtiaq et al.), section IV: accuracy delta (points), reduction factor, and Norm. AD x RF
SEED_001 = [
    ("Pruned (50% sparsity)", -0.12, 1.61, 0.493),
    ("Pruned (75% sparsity)", -0.54, 1.60, 0.484),
    ("Pruned (90% sparsity)", -3.21, 4.48, 0.317),
    ("Pruned (95% sparsity)", -39.4, 6.01, -2.43),
    ("Quantized (16-bit float)", 0.05, 1.97, 0.496),
    ("Quantized (8-bit int)", -3.03, 4.21, 0.338),
    ("Pru. (75%) + Quant. (8-bit int)", -1.05, 8.91, 0.379),
    ("Pru. (90%) + Quant. (8-bit int)", -3.22, 14.14, -0.067),
]


def test_normalized_ad_rf_reproduces_seed_001_table():
    ad = [r[1] for r in SEED_001]
    rf = [r[2] for r in SEED_001]
    got = normalized_ad_rf(ad, rf)
    want = np.array([r[3] for r in SEED_001])
    assert np.abs(got - want).max() <= 0.003
    assert SEED_001[int(np.argmax(got))][0] == "Quantized (16-bit float)"


def test_normalized_ad_rf_is_relative_and_validates():
    s = normalized_ad_rf([-1, -2, -3], [2, 2, 2])
    assert s.mean() == pytest.approx(0) and s.std(ddof=1) == pytest.approx(1)
    assert list(normalized_ad_rf([0, 0], [1, 5])) == [0, 0]
    with pytest.raises(ValueError, match="at least 2"):
        normalized_ad_rf([1.0], [2.0])
    with pytest.raises(ValueError, match="equal-length"):
        normalized_ad_rf([1.0, 2.0], [2.0])


TABLE = pd.DataFrame({
    "label": ["base", "a", "b", "c", "d", "e"],
    "status": ["ok"] * 5 + ["failed"],
    "top1": [98.0, 97.5, 96.0, 98.0, 90.0, np.nan],
    "accuracy_delta": [0.0, -0.5, -2.0, 0.0, -8.0, np.nan],
    "packed_bytes": [160_000, 20_000, 5_000, 40_000, 3_000, np.nan],
    "latency_ms": [2.0, 1.0, 0.5, 1.5, 0.2, np.nan],
})


def test_pareto_front_on_a_known_table():
    front = pareto_front(TABLE, "packed_bytes")
    # base is dominated by c (same top-1, smaller); a, b, c, d trade size for accuracy
    assert list(TABLE.label[front]) == ["a", "b", "c", "d"]
    lat = pareto_front(TABLE, "latency_ms")
    assert list(TABLE.label[lat]) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="column='bytes' must be one of"):
        pareto_front(TABLE, "bytes")


def test_sweet_spot_picks_and_explains():
    p = sweet_spot(TABLE, max_drop=1.0, objective="smallest")
    assert p.row["label"] == "a" and "top-1 drop at most 1 point:" in p.reason
    assert "size of the packed .xpk file 19.5 KiB" in p.reason  # a unit a person reads, not a raw number
    assert sweet_spot(TABLE, max_drop=2.0, objective="smallest").row["label"] == "b"
    assert sweet_spot(TABLE, objective="most_accurate").row["label"] == "c"  # ties: the smaller run
    assert sweet_spot(TABLE, max_drop=10, latency_budget=1.0, objective="most_accurate").row["label"] == "a"
    assert sweet_spot(TABLE, objective="fastest").row["label"] == "d"


def test_sweet_spot_names_the_constraint_no_run_meets():
    p = sweet_spot(TABLE, max_drop=0.1, size_budget=10_000)
    assert p.row is None and p.reason == "no run meets: size at most 9.8 KiB"
    p = sweet_spot(TABLE, latency_budget=0.1)
    assert p.row is None and "(no run meets it even alone)" in p.reason
    with pytest.raises(ValueError, match="objective='cheapest' must be one of"):
        sweet_spot(TABLE, objective="cheapest")


def _noisy_table() -> pd.DataFrame:
    """Five runs on 1,000 test images with their paired counts and latency intervals, made so that the
    point-estimate answer and the 95% answer differ."""
    rows = [  # label, both_right, baseline_only, run_only, both_wrong, size, latency, lat lo, lat hi, steps
        ("base", 950, 0, 0, 50, 160_000, 2.00, 1.90, 2.10, 0),
        ("noisy", 930, 20, 12, 38, 8_000, 1.00, 0.95, 1.05, 2),   # -0.8 points, but -1.8 at the 95% end
        ("steady", 945, 5, 2, 48, 12_000, 1.02, 0.97, 1.08, 1),   # -0.3 points, -0.8 at the 95% end
        ("twin", 946, 4, 2, 48, 12_000, 1.01, 0.96, 1.07, 3),     # as small as steady, more steps
        ("slow", 950, 0, 0, 50, 11_000, 1.60, 1.55, 1.70, 1),
    ]
    out = []
    for label, a, b, c, d, size, lat, lo, hi, steps in rows:
        n = a + b + c + d
        out.append({"label": label, "key": label, "status": "ok", "top1": 100 * (a + c) / n,
                    "accuracy_delta": 100 * (c - b) / n, "both_right": a, "baseline_only": b, "run_only": c,
                    "both_wrong": d, "packed_bytes": size, "lat_x_b256_ms": lat, "lat_x_b256_lo_ms": lo,
                    "lat_x_b256_hi_ms": hi, "steps": steps})
    return pd.DataFrame(out)


def test_a_run_qualifies_only_when_95_percent_sure_within_the_drop():
    t = _noisy_table()
    point = sweet_spot(t, max_drop=1.0, objective="smallest", confidence=None)
    assert point.row["label"] == "noisy"  # by point estimates: -0.8 points, the smallest
    sure = sweet_spot(t, max_drop=1.0, objective="smallest")
    assert sure.row["label"] == "slow" and "95% sure to lose at most 1 point of top-1" in sure.reason
    assert sure.point_row["label"] == "noisy" and sure.confidence == 0.95
    assert not sure.point_qualifies  # the page says: not 95% sure, rather than "a tie"


def test_overlapping_latency_intervals_are_ties_broken_by_size_then_steps():
    t = _noisy_table()
    fast = sweet_spot(t, max_drop=1.0, objective="fastest", latency_col="lat_x_b256_ms")
    # steady (1.02 ms) and twin (1.01 ms) overlap: a tie, broken by size (equal), then fewer steps
    assert fast.row["label"] == "steady" and "tie within their 95% intervals" in fast.reason
    point = sweet_spot(t, max_drop=1.0, objective="fastest", latency_col="lat_x_b256_ms", confidence=None)
    assert point.row["label"] == "noisy"  # fastest by point estimates, but not 95% sure within the drop
    assert fast.point_row is not None and fast.point_row["label"] == "noisy"
    alone = sweet_spot(t[t["label"] != "noisy"], max_drop=1.0, objective="fastest", latency_col="lat_x_b256_ms",
                       confidence=None)
    assert alone.row["label"] == "twin"  # 1.01 ms beats 1.02 ms when noise is ignored
    tie = sweet_spot(t[t["label"] != "noisy"], max_drop=1.0, objective="fastest", latency_col="lat_x_b256_ms")
    assert tie.row["label"] == "steady" and tie.point_row["label"] == "twin" and tie.point_qualifies


def test_forgets_counts_the_flipped_images_and_the_moves():
    from explorer.app.metrics import forgets

    y = np.array([0, 0, 1, 1, 2, 2, 2, 1])
    base = np.array([0, 0, 1, 2, 2, 2, 1, 1])
    run = np.array([0, 1, 1, 1, 2, 0, 1, 1])
    f = forgets(y, base, run, ["a", "b", "c"])
    b = int(((base == y) & (run != y)).sum())
    c = int(((base != y) & (run == y)).sum())
    assert len(f.lost) == b == 2 and len(f.gained) == c == 1
    assert list(f.lost) == [1, 5] and list(f.gained) == [3]
    assert f.per_class.set_index("class").loc["a", "change"] == pytest.approx(-50.0)
    from explorer.core.stats import newcombe_paired

    for cls, k in (("a", 0), ("c", 2)):  # each class's interval: Newcombe's on that class's images alone
        m = y == k
        a, bb = int(((base[m] == k) & (run[m] == k)).sum()), int(((base[m] == k) & (run[m] != k)).sum())
        cc, d = int(((base[m] != k) & (run[m] == k)).sum()), int(((base[m] != k) & (run[m] != k)).sum())
        row = f.per_class.set_index("class").loc[cls]
        assert [row["change_lo"], row["change_hi"]] == pytest.approx(list(newcombe_paired(a, bb, cc, d)), abs=1e-3)
        assert row["change_lo"] <= row["change"] <= row["change_hi"]
    assert f.confusion_change.sum() == 0 and f.confusion_change[0, 1] == 1 and f.confusion_change[2, 0] == 1


@pytest.mark.parametrize("kw,message", [
    ({"max_drop": float("nan")}, "max_drop=nan must be points in [-100, 100]"),
    ({"size_budget": 0}, "size_budget=0 must be a positive number"),
    ({"latency_budget": -1.0}, "latency_budget=-1.0 must be a positive number of ms"),
    ({"confidence": 1.5}, "confidence=1.5 must be a fraction in (0, 1), or None"),
])
def test_sweet_spot_refuses_constraints_no_run_could_meet(kw, message):
    """These used to answer "no run meets ..." about what was a typo (NaN compares false with everything)."""
    with pytest.raises(ValueError) as e:
        sweet_spot(TABLE, objective="smallest", **kw)
    assert str(e.value) == message


def test_resolution_is_the_drop_an_exact_copy_of_the_baseline_can_be_sure_of():
    from explorer.app.metrics import resolution

    # digits: 359 test images, the baseline right on 353; a copy of it is within -1.02..+1.02 points (Newcombe)
    rows = pd.DataFrame([{"both_right": 340, "baseline_only": 13, "run_only": 2, "both_wrong": 4}])
    n, points = resolution(rows)
    assert n == 359 and points == pytest.approx(1.0233, abs=1e-3)
    big = pd.DataFrame([{"both_right": 9000, "baseline_only": 187, "run_only": 20, "both_wrong": 793}])
    assert resolution(big)[1] < 0.05  # 10,000 images resolve a few hundredths of a point
    assert resolution(pd.DataFrame([{"top1": 90.0}])) is None


def test_the_sweet_spots_reason_gives_the_comparison_with_the_same_training_where_there_is_one():
    tuned = TABLE.assign(control_delta=[np.nan, -0.4, np.nan, np.nan, np.nan, np.nan],
                         control_delta_lo=[np.nan, -0.9, np.nan, np.nan, np.nan, np.nan],
                         control_delta_hi=[np.nan, 0.1, np.nan, np.nan, np.nan, np.nan],
                         control_significant=[np.nan, False, np.nan, np.nan, np.nan, np.nan],
                         control_budget=[np.nan, "2 epochs", np.nan, np.nan, np.nan, np.nan])
    p = sweet_spot(tuned, max_drop=1.0, objective="smallest")
    assert p.row["label"] == "a"
    assert ("against the baseline fine-tuned the same 2 epochs without compression: -0.40 points, 95% interval "
            "-0.90 to +0.10 (within noise)") in p.reason
    assert "fine-tuned" not in sweet_spot(tuned, max_drop=2.0, objective="smallest").reason  # b has no control


def test_across_seeds_gives_one_row_per_configuration():
    """Every results row names its configuration; the mean across seeds used to fail on that very column (the
    group's key), so the curves of a sweep repeated over seeds raised instead of drawing."""
    from explorer.app.metrics import across_seeds

    df = pd.DataFrame({"config": ["a", "a", "b"], "seed": [0, 1, 0], "status": ["ok"] * 3, "label": ["x", "x", "y"],
                       "top1": [90.0, 92.0, 80.0], "top5": [99.0, 99.0, 98.0], "accuracy_delta": [-1.0, 1.0, -11.0]})
    out = across_seeds(df).set_index("config")
    assert out.loc["a", "top1"] == 91.0 and out.loc["a", "seeds"] == 2 and out.loc["b", "seeds"] == 1
    assert out.loc["a", "top1_std"] == pytest.approx(2 ** 0.5) and out.loc["a", "label"] == "x"
