"""Plain words: a recipe says everything that changes what it computes, and one verdict is said one way."""

import re
from pathlib import Path

from explorer.compress.recipe import recipe_words
from explorer.core import words

ROOT = Path(__file__).resolve().parent.parent


def _prune(**kw) -> dict:
    return {"kind": "prune", "sparsity": 0.5, "granularity": "channel", "schedule": "oneshot", "finetune_epochs": 2,
            **kw}


def test_the_configuration_line_names_the_pruning_criterion():
    l1, l2 = (recipe_words({"steps": [_prune(criterion=c)]}) for c in ("l1", "l2"))
    assert l1 != l2 and "by L2 norm" in l2 and "by L1 norm" in l1
    assert "geometric median" in recipe_words({"steps": [_prune(criterion="geometric_median")]})
    # n:m keeps the larger n of every m and single weights rank alike by L1 and L2: no criterion to name
    assert recipe_words({"steps": [_prune(granularity="nm", criterion="l1")]}) == \
        "prune 50% of the weights, keeping 2 of every 4 (2:4) at once, fine-tuned 2 epochs"
    assert recipe_words({"steps": [_prune(granularity="unstructured")]}) == \
        "prune 50% of the single weights, ranked across layers by layer-adaptive scores (LAMP), at once, " \
        "fine-tuned 2 epochs"


def test_within_noise_is_said_one_way_everywhere():
    """"within noise", never "no significant change", "no measurable change" or "no change" for the same thing;
    and the packed file is loaded back with one name, explorer.unpack."""
    other = re.compile(r"no (significant|measurable) change|\"no change\"|explorer\.artifact\.pack\.unpack")
    said = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in (ROOT / "explorer").rglob("*.py")
            for m in other.finditer(p.read_text())]
    assert not said, said


def test_the_size_reference_is_named():
    r = {"recipe": {"model": "lenet5", "dataset": "fashion-mnist", "checkpoint": None}}
    assert words.size_reference(r) == "the baseline's fp32 checkpoint file (lenet5-fashion-mnist.safetensors)"
    r = {"recipe": {"model": "lenet5", "dataset": "x", "checkpoint": "/data/user/models/mine.safetensors"}}
    assert words.size_reference(r).endswith("(mine.safetensors)")
