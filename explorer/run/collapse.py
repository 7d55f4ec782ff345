"""Whether a run's model collapsed: it guesses, so its figures are no trade-off (DESIGN: a run whose model
collapsed is marked as such, never drawn as a point).

Three signs, each enough: its top-1 cannot be told from a uniform guess among the classes (the 95% Wilson
interval of its correct count reaches 1/classes, while the baseline's lies above it); its last fine-tuning epoch
ended with the cross-entropy of a uniform guess, ln(classes), within LOSS_TOLERANCE (the MobileNetV3-small whose
loss sat at 2.3026 = ln 10 for five minutes); or a Conv or Linear layer has every weight zero (the network is cut
there). Pure functions of figures a run already has; the runner stores the verdict in the RunResult's
`collapse`, and every view reads it through `collapsed` and `words`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from explorer.compress.recipe import Recipe
from explorer.core import words as plain
from explorer.core.stats import wilson
from explorer.run.result import Collapse

# A model that guesses ends its epochs at ln(classes) to within a few thousandths (2.3026 for ten classes; a
# balanced training set's label entropy is ln(classes) itself); one that learns, even poorly, ends well below it.
LOSS_TOLERANCE = 0.01  # a share of ln(classes): 0.023 for ten classes


def detect(*, classes: int, correct: int, n: int, baseline_correct: int | None, losses: Sequence[Sequence[float]],
           emptied: Sequence[str]) -> Collapse | None:
    """The verdict on a compressed model from its correct count on `n` test images, the baseline's (None: not
    known), each fine-tuning's per-epoch losses in order, and the layers with every weight zero; None where it
    did not collapse."""
    if classes < 2 or n <= 0:
        return None
    chance, chance_loss = 100.0 / classes, math.log(classes)
    reasons = []
    above = baseline_correct is None or wilson(baseline_correct, n)[0] > chance  # a baseline that beats guessing
    if above and wilson(correct, n)[0] <= chance:
        reasons.append("top1_at_chance")
    final = next((epochs[-1] for epochs in reversed(losses) if epochs), None)
    if final is not None and abs(final - chance_loss) <= LOSS_TOLERANCE * chance_loss:
        reasons.append("loss_at_chance")
    if emptied:
        reasons.append("layer_emptied")
    if not reasons:
        return None
    return Collapse(reasons=reasons, layers_emptied=list(emptied), classes=classes, chance_top1=round(chance, 4),
                    chance_loss=round(chance_loss, 4), final_loss=None if final is None else round(final, 4))


def collapsed(result: Mapping[str, Any]) -> bool:
    return bool(result.get("collapse"))


def _listed(names: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def emptied_words(result: Mapping[str, Any]) -> str | None:
    """The layers with every weight zero, named, for the Layers tab; None where there are none."""
    names = list((result.get("collapse") or {}).get("layers_emptied") or [])
    if not names:
        return None
    one = len(names) == 1
    return (f"{plain.count(len(names), 'layer')} {'has' if one else 'have'} every weight zero: {_listed(names)}. "
            f"Nothing passes through {'it' if one else 'them'} but a bias, so the model's output no longer depends on "
            "its input there.")


def advice(result: Mapping[str, Any]) -> str:
    """What to try instead, as the recipe's techniques say it."""
    try:
        steps = Recipe.from_dict(result["recipe"]).steps
    except (KeyError, ValueError, TypeError):
        steps = ()
    said = [a for a in dict.fromkeys(step.collapse_advice() for step in steps) if a]
    return "Try " + ("; or ".join(said) if said else "a milder setting of the compression") + "."


def words(result: Mapping[str, Any]) -> str | None:
    """What collapsed and why, that its figures are no trade-off, and what to try, in plain words; None where the
    run did not collapse."""
    c = result.get("collapse")
    if not c:
        return None
    why = []
    if "top1_at_chance" in c["reasons"]:
        ci = (result.get("accuracy_ci") or {}).get("top1")
        interval = f" (95% interval {ci[0]:.2f}–{ci[1]:.2f}%)" if ci else ""
        why.append(f"its top-1, {result['accuracy']['top1']:.2f}%{interval}, cannot be told from guessing among "
                   f"{c['classes']} classes ({c['chance_top1']:.2f}%)")
    if "loss_at_chance" in c["reasons"]:
        why.append(f"its fine-tuning ended at a training loss of {c['final_loss']:.4f}, the loss of a uniform guess "
                   f"(ln {c['classes']} = {c['chance_loss']:.4f}): it learned nothing")
    if "layer_emptied" in c["reasons"]:
        names = c["layers_emptied"]
        why.append(f"{plain.count(len(names), 'layer')} lost every weight ({_listed(names)})")
    return ("This model collapsed: " + "; ".join(why) + ". Its figures are not a measured trade-off: the compression "
            "broke the model rather than trading accuracy for size, and a setting a little milder can behave quite "
            "differently. " + advice(result))
