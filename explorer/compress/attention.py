"""Transformer pruning that physically removes whole attention heads or MLP hidden neurons.

Prune's granularities 'heads' and 'neurons' run here (as 'channel' runs in explorer.compress.channel).
The explorer picks what to remove from plain scores (`head_scores`, `neuron_scores`, `choose`), and
Torch-Pruning's dependency graph removes it: the head's rows of the fused query/key/value projection and
the matching input columns of the output projection (through the reshape and unbind timm's attention
does between them), or a hidden unit's row of fc1 and column of fc2. The model stays a plain timm
VisionTransformer with fewer heads per block (its `num_heads` follows), so ONNX export and the packed
format's rebuild (explorer.artifact.architecture) see ordinary Linear layers.

Removing a head is exactly zeroing its output before the output projection (Michel et al., "Are Sixteen
Heads Really Better than One?", mask the heads the same way): tests/test_attention.py checks it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from explorer.compress.base import Context, finetune, require_shapes_free

if TYPE_CHECKING:
    from explorer.compress.prune_config import PruneConfig

UNITS = {"heads": "attention heads", "neurons": "MLP hidden neurons"}


def attention_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm's multi-head self-attention modules (fused qkv Linear, then proj), the ones heads can leave."""
    try:
        from timm.layers import Attention
    except ImportError:  # timm is optional: without it no model holds its attention
        return []
    return [(n, m) for n, m in model.named_modules() if type(m) is Attention and getattr(m, "gate", None) is None]


def mlp_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm's transformer MLPs (fc1 -> activation -> fc2), whose hidden neurons can be removed."""
    try:
        from timm.layers import Mlp
    except ImportError:
        return []
    return [(n, m) for n, m in model.named_modules()
            if type(m) is Mlp and isinstance(m.fc1, nn.Linear) and isinstance(m.fc2, nn.Linear)]


def blocks(model: nn.Module, granularity: str) -> list[tuple[str, nn.Module]]:
    return attention_blocks(model) if granularity == "heads" else mlp_blocks(model)


def _units(m: Any, granularity: str) -> int:
    n: int = m.num_heads if granularity == "heads" else m.fc1.out_features
    return n


def head_rows(attn: Any, head: int) -> list[int]:
    """The output rows of the fused qkv projection that belong to `head` (its query, key and value parts)."""
    d, dim = attn.head_dim, attn.num_heads * attn.head_dim
    return [part * dim + head * d + i for part in range(3) for i in range(d)]


def _mag(t: torch.Tensor, p: int) -> torch.Tensor:
    return t.detach().abs().float() if p == 1 else t.detach().float() ** 2


def head_scores(attn: Any, p: int = 1) -> torch.Tensor:
    """Each head's mean |w| (p=1) or w^2 (p=2) over its query/key/value rows (and biases) and its columns of
    the output projection: Torch-Pruning's group magnitude, averaged over the head."""
    d = attn.head_dim
    out = []
    for h in range(attn.num_heads):
        rows = torch.tensor(head_rows(attn, h))
        parts = [_mag(attn.qkv.weight[rows], p).reshape(-1),
                 _mag(attn.proj.weight[:, h * d:(h + 1) * d], p).reshape(-1)]
        if attn.qkv.bias is not None:
            parts.append(_mag(attn.qkv.bias[rows], p))
        out.append(torch.cat(parts).mean())
    return torch.stack(out)


def neuron_scores(mlp: Any, p: int = 1) -> torch.Tensor:
    """Each hidden neuron's summed |w| (or w^2) over its fc1 row, its fc1 bias and its fc2 column."""
    s = _mag(mlp.fc1.weight, p).sum(1) + _mag(mlp.fc2.weight, p).sum(0)
    return s + _mag(mlp.fc1.bias, p) if mlp.fc1.bias is not None else s


def choose(scores: dict[str, torch.Tensor], share: float, scope: str) -> dict[str, list[int]]:
    """The units to remove per block: the lowest-scoring `share` of each block's units (scope 'layer', rounded),
    or of all units ranked together (scope 'global', each block's scores divided by their mean so blocks of
    different scale compare). Every block keeps at least one unit."""
    out: dict[str, list[int]] = {}
    if scope == "layer":
        for name, s in scores.items():
            k = min(round(share * len(s)), len(s) - 1)
            out[name] = sorted(torch.argsort(s, stable=True)[:k].tolist())
        return out
    flat = [(float(v) / max(float(s.mean()), 1e-12), name, i) for name, s in scores.items() for i, v in enumerate(s)]
    k = round(share * len(flat))
    out = {name: [] for name in scores}
    for _, name, i in sorted(flat):
        if k == 0:
            break
        if len(out[name]) < len(scores[name]) - 1:
            out[name].append(i)
            k -= 1
    return {name: sorted(v) for name, v in out.items()}


def remove(model: nn.Module, example: torch.Tensor, granularity: str, plan: dict[str, list[int]]) -> None:
    """Remove the planned heads or neurons in place, through Torch-Pruning's dependency graph."""
    import torch_pruning as tp  # imported where used: it pulls in timm and torchvision (seconds)

    with warnings.catch_warnings():  # its note on the class token and position embedding: their width stays
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    with torch.no_grad():
        _remove(model, graph, granularity, plan)


def _remove(model: nn.Module, graph: Any, granularity: str, plan: dict[str, list[int]]) -> None:
    import torch_pruning as tp  # imported where used: it pulls in timm and torchvision (seconds)

    for name, idxs in plan.items():
        if not idxs:
            continue
        m: Any = model.get_submodule(name)  # timm's Attention or Mlp
        if granularity == "heads":
            rows = [r for h in idxs for r in head_rows(m, h)]
            graph.get_pruning_group(m.qkv, tp.prune_linear_out_channels, rows).prune()
            m.num_heads -= len(idxs)
            m.attn_dim = m.num_heads * m.head_dim
        else:
            graph.get_pruning_group(m.fc1, tp.prune_linear_out_channels, list(idxs)).prune()


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    import torch_pruning as tp  # imported where used: it pulls in timm and torchvision (seconds)

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def prune_units(model: nn.Module, cfg: PruneConfig, ctx: Context) -> dict[str, Any]:
    """Remove the `cfg.sparsity` share of attention heads or MLP neurons from `model` in place (the caller
    passes a copy), then fine-tune; the report has each block's units before and after."""
    g = cfg.granularity
    require_shapes_free(ctx.state, f"{g} pruning")
    found = blocks(model, g)
    if not found:
        raise ValueError(f"granularity={g!r} removes {UNITS[g]} of a transformer built from timm's modules; "
                         "this model has none (use 'channel' for convolutional networks)")
    data = ctx.need_data(f"{g} pruning (an example input for the dependency graph)")
    example = torch.zeros(1, *data.input_shape)
    p = 2 if cfg.criterion == "l2" else 1
    score = head_scores if g == "heads" else neuron_scores
    plan = choose({n: score(m, p) for n, m in found}, cfg.sparsity, cfg.scope)
    before = {n: _units(m, g) for n, m in found}
    macs0, params0 = macs_and_params(model, example)
    model.eval()
    remove(model, example, g, plan)
    report = finetune(model, ctx, cfg.finetune_epochs, cfg.lr, f"{g} pruning")
    macs1, params1 = macs_and_params(model, example)
    modules = dict(model.named_modules())
    info: dict[str, Any] = {"rounds": [{"ratio": cfg.sparsity, **report}], "removed": plan,
            "channels": {n: {"before": c, "after": _units(modules[n], g)} for n, c in before.items()},
            "macs_before": macs0, "macs_after": macs1, "params_before": params0, "params_after": params1}
    total0, total1 = sum(before.values()), sum(v["after"] for v in info["channels"].values())
    ctx.state.notes.append(
        f"Removing {total0 - total1} of {total0} {UNITS[g]} took {1 - params1 / params0:.1%} of the parameters and "
        f"{1 - macs1 / macs0:.1%} of the multiply-accumulates of the model's layers; the model stays dense, so "
        "every runtime gets the smaller layers.")
    return info
