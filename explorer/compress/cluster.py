"""Weight clustering (k-means weight sharing), as in Deep Compression and TF-MOT's `cluster_weights`.

Each selected layer's weights are replaced by one of `clusters` shared values; the codebook
(centroids + per-weight assignments) goes into the compression state so later fine-tuning moves the
shared centroids rather than single weights, and the packed format stores small indices.

The k-means runs in 1-D on the sorted values: in one dimension every cluster is a contiguous run of
the sorted data, so a Lloyd iteration needs only the run boundaries (a binary search for each
midpoint between neighbouring centroids) and prefix sums, O(k log n) instead of O(n k). The same
prefix sums price "drop a centroid, split another cluster" swaps exactly, which a short local search
uses to leave the poor local optima Lloyd stops in.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from explorer.compress import base
from explorer.core.errors import bad_value, check_choice, check_range

INITS = ("linear", "random", "kmeans++")
# kmeans++ seeding costs O(samples * k); a uniform subsample this large seeds as well as the full data
KMEANSPP_SAMPLES = 100_000
SWAP_ROUNDS = 20  # local-search rounds after Lloyd; each costs O(k^2 + k log n), most runs stop early
SWAP_TRIES = 8  # single swaps tried per round before the local search gives up
SPLIT_STEPS = 5  # 2-means steps that place each cluster's trial split


CLUSTER_OPTIONS = ("off", "2", "4", "8", "16", "32", "64", "128", "256")


@dataclass(frozen=True)
class ClusterConfig(base.StepConfig):
    kind: ClassVar[str] = "cluster"
    one_record: ClassVar[bool] = True
    page_order: ClassVar[int] = 40
    section: ClassVar[tuple[int, str, bool]] = (3, "Clustering", True)

    clusters: int = 16
    init: str = "kmeans++"
    finetune_epochs: int = 0
    lr: float = 1e-4
    layers: str = "all"
    max_iter: int = 30

    def label(self) -> str:
        return f"cluster {self.clusters}"

    def words(self) -> str:
        return f"share {self.clusters} values per layer (clustering)"

    @classmethod
    def controls(cls) -> tuple[base.Control, ...]:
        return (base.Control("clusters", "off", CLUSTER_OPTIONS, off="off", label="Clusters per layer", slider=True,
                             help="k-means weight sharing: each layer keeps at most this many distinct values.",
                             sweep=("off", "16"), aliases={"0": "off"},
                             words={"off": "no clustering"}),
                base.Control("cluster_finetune", False, enabled=lambda c, card: c["clusters"] != "off",
                             label="Fine-tune centroids"))

    @classmethod
    def from_controls(cls, controls: base.Controls, card: base.Card,
                      before: tuple[base.StepConfig, ...]) -> ClusterConfig | None:
        if controls["clusters"] == "off":
            return None
        return cls(clusters=int(controls["clusters"]), finetune_epochs=1 if controls["cluster_finetune"] else 0)

    def to_controls(self) -> dict[str, Any]:
        return {"clusters": str(self.clusters), "cluster_finetune": self.finetune_epochs > 0}

    def columns(self) -> dict[str, Any]:
        return {"clusters": self.clusters}

    @classmethod
    def blank_columns(cls) -> dict[str, Any]:
        return {"clusters": 0}

    def training_epochs(self) -> int:
        return self.finetune_epochs

    def __post_init__(self) -> None:
        check_range("clusters", self.clusters, 2, 256, integer=True)
        check_choice("init", self.init, INITS)
        check_range("finetune_epochs", self.finetune_epochs, 0, base.MAX_STEP_EPOCHS, integer=True)
        check_range("lr", self.lr, 1e-7, 10.0)  # the range TrainConfig accepts for fine-tuning
        check_choice("layers", self.layers, base.LAYER_CHOICES)
        check_range("max_iter", self.max_iter, 1, 1000, integer=True)


# ---------------------------------------------------------------- 1-D k-means on plain tensors


def kmeans_1d(values: torch.Tensor, k: int, init: str = "kmeans++", seed: int = 0,
              max_iter: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the entries of `values` into at most `k` groups.

    Returns (centroids, assignments): centroids float32, sorted ascending, distinct, none of them
    empty (so there can be fewer than k: fewer distinct values, or a cluster that emptied out);
    assignments int64 with `values`' shape, each entry the index of its nearest centroid.
    `max_iter` bounds the Lloyd iterations after the seeding and after each swap of the local search.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise bad_value("k", k, "an integer >= 1")
    check_choice("init", init, INITS)
    check_range("max_iter", max_iter, 1, 100_000, integer=True)
    flat = values.detach().reshape(-1).to("cpu", torch.float64)
    if flat.numel() == 0:
        raise ValueError("cannot cluster an empty tensor")
    if not torch.isfinite(flat).all():
        raise ValueError("cannot cluster values that are NaN or infinite")

    # Duplicates collapse into weighted points: exact for repeated values, and it makes the
    # "fewer distinct values than k" case fall out naturally.
    uniq, counts = torch.unique_consecutive(torch.sort(flat).values, return_counts=True)
    if len(uniq) <= k:
        return uniq.float(), torch.searchsorted(uniq, flat).reshape(values.shape)

    pts = _Points(uniq, counts.double())
    g = torch.Generator().manual_seed(seed)
    cent = pts.lloyd(_init_centroids(pts, flat, k, init, g), max_iter)
    cent = pts.local_search(cent, max_iter)
    # the final partition is the nearest-centroid one for the final centroids; empty clusters are
    # dropped so a codebook never carries an entry that no weight uses
    starts, ends = pts.runs(cent)
    cent = cent[ends > starts]
    idx = torch.searchsorted(_midpoints(cent), flat, right=True)
    return cent.float(), idx.reshape(values.shape)


def _midpoints(cent: torch.Tensor) -> torch.Tensor:
    return (cent[:-1] + cent[1:]) / 2


def _search(sorted_x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """searchsorted (left) for a few hundred queries. torch spreads even these over its thread pool,
    and on a busy machine waking the pool costs milliseconds per call; numpy stays on this thread."""
    return torch.from_numpy(np.searchsorted(sorted_x.numpy(), q.numpy()).astype(np.int64))


class _Points:
    """Sorted distinct values with their multiplicities and prefix sums. In 1-D every cluster of a
    nearest-centroid partition is a contiguous run [a, b) of these points, so a run's size, mean and
    squared error are O(1) differences of prefix sums."""

    def __init__(self, uniq: torch.Tensor, weights: torch.Tensor):
        self.x, self.w = uniq, weights
        # centred so the sums of squares do not swamp small within-run errors in float64
        self.shift = (weights * uniq).sum() / weights.sum()
        xc = uniq - self.shift
        zero = torch.zeros(1, dtype=torch.float64)
        self.s_w = torch.cat([zero, torch.cumsum(weights, 0)])
        self.s_x = torch.cat([zero, torch.cumsum(weights * xc, 0)])
        self.s_xx = torch.cat([zero, torch.cumsum(weights * xc * xc, 0)])

    def runs(self, cent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end (exclusive) of each centroid's run; a point on a midpoint goes right, as
        searchsorted(..., right=True) does in the final assignment."""
        cuts = _search(self.x, _midpoints(cent))
        zero, n = cuts.new_zeros(1), cuts.new_tensor([len(self.x)])
        return torch.cat([zero, cuts]), torch.cat([cuts, n])

    def stats(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weight, mean and squared error of runs [a, b)."""
        n = self.s_w[b] - self.s_w[a]
        sx = self.s_x[b] - self.s_x[a]
        safe = n.clamp_min(1e-300)
        sse = (self.s_xx[b] - self.s_xx[a] - sx * sx / safe).clamp_min(0)
        return n, sx / safe + self.shift, sse

    def lloyd(self, cent: torch.Tensor, max_iter: int) -> torch.Tensor:
        prev = None
        for _ in range(max_iter):
            starts, ends = self.runs(cent)
            if prev is not None and torch.equal(ends, prev):
                break  # same partition as last time: the centroids are already its means
            prev = ends
            n, mean, _ = self.stats(starts, ends)
            # an empty run keeps its centroid; means of contiguous runs stay ordered, the sort is a guard
            cent = torch.sort(torch.where(n > 0, mean, cent)).values
        return cent

    def sse(self, cent: torch.Tensor) -> float:
        """The error of the nearest-centroid assignment, which is what kmeans_1d returns."""
        return float(self.fixed_cost(*self.runs(cent), cent).sum())

    def local_search(self, cent: torch.Tensor, max_iter: int) -> torch.Tensor:
        """Lloyd stops in a local optimum, often several percent worse than the best (and worse than
        scikit-learn's). Swap a centroid for a split of another cluster, let Lloyd settle, and keep
        the result only when the error drops. A swap that costs more than it gains at first can pay
        off once Lloyd moves the others, so the few most promising are tried before giving up."""
        best = self.sse(cent)
        for _ in range(SWAP_ROUNDS):
            for cand in self._swaps(cent):
                cand = self.lloyd(cand, max_iter)
                err = self.sse(cand)
                if err < best * (1 - 1e-9):
                    cent, best = cand, err
                    break
            else:
                break
        return cent

    def fixed_cost(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Squared error of runs [a, b) around fixed centres c: sum w (x - c)^2 from prefix sums."""
        c = c - self.shift
        return ((self.s_xx[b] - self.s_xx[a]) - 2 * c * (self.s_x[b] - self.s_x[a])
                + c * c * (self.s_w[b] - self.s_w[a])).clamp_min(0)

    def _swaps(self, cent: torch.Tensor) -> list[torch.Tensor]:
        """Centroid sets that drop one centroid (its points go to its neighbours) and split another
        cluster in two, the SWAP_TRIES best by their exact immediate change in error."""
        k = len(cent)
        if k < 3:
            return []
        starts, ends = self.runs(cent)
        err = self.fixed_cost(starts, ends, cent)
        _, mean, _ = self.stats(starts, ends)
        # split every run in two by a few 2-means steps of its own, all runs at once: O(k log n)
        lo, hi = (starts + 1).clamp_max(len(self.x) - 1), (ends - 1).clamp_min(1)
        cut = _search(self.x, mean).clamp(lo, hi)
        for _ in range(SPLIT_STEPS):
            _, m_left, _ = self.stats(starts, cut)
            _, m_right, _ = self.stats(cut, ends)
            cut = _search(self.x, (m_left + m_right) / 2).clamp(lo, hi)
        _, m_left, e_left = self.stats(starts, cut)
        _, m_right, e_right = self.stats(cut, ends)
        gain = torch.where(ends - starts >= 2, err - e_left - e_right, -torch.inf)
        # dropping centroid j hands its run to the nearer of its neighbours, which stay where they are
        left_c = torch.cat([cent[1:2], cent[:-2], cent[-2:-1]])  # the end centroids give all to one side
        right_c = torch.cat([cent[1:2], cent[2:], cent[-2:-1]])
        mid = _search(self.x, (left_c + right_c) / 2).clamp(starts, ends)
        drop = self.fixed_cost(starts, mid, left_c) + self.fixed_cost(mid, ends, right_c) - err
        net = drop[:, None] - gain[None, :]  # [j, r]: drop j, split r
        j_idx, r_idx = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
        net[(j_idx - r_idx).abs() <= 1] = torch.inf  # neighbours interact; the split prices assume not
        flat_net = net.flatten()
        order = flat_net.argsort()[:4 * k].tolist()
        values = flat_net[order].tolist()

        def swapped(pairs: list[tuple[int, int]]) -> torch.Tensor:
            keep = torch.ones(k, dtype=torch.bool)
            for j, r in pairs:
                keep[[j, r]] = False
            added = [torch.stack([m_left[r], m_right[r]]) for _, r in pairs]
            return torch.sort(torch.cat([cent[keep], *added])).values

        # all improving swaps that leave each other's clusters alone, at once: from a poor start (linear
        # init on a long-tailed layer strands many centroids in the tails) one swap a round is too slow
        taken: set[int] = set()
        batch = []
        for f, v in zip(order, values, strict=True):
            if not v < 0:
                break
            j, r = divmod(f, k)
            touched = {j - 1, j, j + 1, r}
            if not touched & taken:
                taken |= touched
                batch.append((j, r))
        out = [swapped(batch)] if len(batch) > 1 else []
        for f, v in zip(order[:SWAP_TRIES], values, strict=False):
            if v == float("inf"):
                break
            out.append(swapped([divmod(f, k)]))
        return out


def _init_centroids(pts: _Points, flat: torch.Tensor, k: int, init: str, g: torch.Generator) -> torch.Tensor:
    """Up to k distinct starting centroids (pts holds more than k distinct values)."""
    if init == "linear":
        # TF-MOT's default: evenly spaced over the range, no data-dependent randomness
        return torch.linspace(float(pts.x[0]), float(pts.x[-1]), k, dtype=torch.float64)
    if init == "random":
        return torch.sort(pts.x[torch.randperm(len(pts.x), generator=g)[:k]]).values
    if len(pts.x) > KMEANSPP_SAMPLES:
        # a uniform subsample of the raw values keeps duplicates' weight without materialising them
        x = flat[torch.randint(len(flat), (KMEANSPP_SAMPLES,), generator=g)]
        w = torch.ones_like(x)
    else:
        x, w = pts.x, pts.w
    chosen = [_draw(w, g)]
    d2 = w * (x - x[chosen[0]]) ** 2
    for _ in range(k - 1):
        if not float(d2.sum()) > 0:
            break  # the subsample ran out of distinct values; Lloyd works with fewer
        i = _draw(d2, g)
        chosen.append(i)
        d2 = torch.minimum(d2, w * (x - x[i]) ** 2)
    return torch.sort(torch.unique(x[torch.tensor(chosen)])).values


def _draw(p: torch.Tensor, g: torch.Generator) -> int:
    """One index with probability proportional to p (inverse CDF: cheaper than multinomial per draw)."""
    c = torch.cumsum(p, 0)
    u = torch.rand(1, generator=g, dtype=torch.float64) * c[-1]
    i = int(torch.searchsorted(c, u, right=True).clamp_max(len(p) - 1))
    while p[i] <= 0:  # u landed on the edge of a zero-probability point
        i -= 1
    return i


# ---------------------------------------------------------------- the step


def cluster_weight(w: torch.Tensor, mask: torch.Tensor | None, config: ClusterConfig, seed: int) -> base.Codebook:
    """Codebook for one weight tensor; only the kept weights are clustered, so pruned weights (which
    are 0 by the mask, not by a centroid) neither pull a centroid towards 0 nor use up a cluster."""
    w = w.detach().to("cpu", torch.float32)
    assign = torch.zeros(w.shape, dtype=torch.int64)
    kept = w if mask is None else w[mask]
    if kept.numel() == 0:  # a layer pruned away entirely: one dummy centroid keeps the codebook valid
        return base.Codebook(torch.zeros(1), assign)
    cent, idx = kmeans_1d(kept, config.clusters, config.init, seed, config.max_iter)
    if mask is None:
        assign = idx.reshape(w.shape)
    else:
        assign[mask] = idx
    return base.Codebook(cent, assign)


def _mask_for(state: base.CompressionState, name: str, w: torch.Tensor) -> torch.Tensor | None:
    mask = state.masks.get(name)
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(w.shape):
        raise ValueError(f"mask for {name} has shape {tuple(mask.shape)} but the weight has {tuple(w.shape)}; "
                         "a step changed the layer after pruning")
    return mask.to("cpu", torch.bool)


def _distinct(model: nn.Module, state: base.CompressionState, name: str) -> int:
    w, mask = base.named_param(model, name).detach(), state.masks.get(name)
    return int(torch.unique(w if mask is None else w[mask.to(w.device, torch.bool)]).numel())


@base.register_step(ClusterConfig)
def apply(model: nn.Module, config: ClusterConfig, ctx: base.Context) -> base.Compressed:
    """Cluster the weights of the selected layers, then optionally fine-tune the shared centroids."""
    t0 = time.perf_counter()
    names = [f"{n}.weight" if n else "weight" for n, _ in base.compressible(model, config.layers)]
    # centroids are means, so they fall off a quantisation grid or reduced float format a weight was
    # put on, and the state's record of it would describe a tensor that no longer exists
    held = [n for n in names if n in ctx.state.quant or n in ctx.state.float_format]
    if held:
        raise ValueError(f"cluster cannot follow quantize or a float-format cast ({len(held)} weights already on "
                         f"a grid, e.g. {held[0]}): put cluster before quantize in the recipe")
    model = base.clone(model)
    state = ctx.state.copy()
    with torch.no_grad():
        for name in names:
            w = base.named_param(model, name)
            mask = _mask_for(state, name, w)
            cb = cluster_weight(w, mask, config, ctx.seed)
            w.copy_(base.codebook_weight(cb, mask).to(w.device, w.dtype))
            state.codebooks[name] = cb  # re-clustering replaces the old codebook
    report = base.finetune(model, dataclasses.replace(ctx, state=state), config.finetune_epochs, config.lr,
                           "clustering")
    base.record(state, config, {
        "clusters": config.clusters,
        "init": config.init,
        "distinct_values": {name: _distinct(model, state, name) for name in names},
        "finetune": report,
        "seconds": round(time.perf_counter() - t0, 3),
    })
    return base.Compressed(model, state)
