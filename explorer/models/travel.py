"""Recipes that travel.

A recipe the page hands out names its model by its name and the sha256 of its weights (never a path on the server
that made it), and holds every setting that changes its figures: the fine-tuning subset where the card recommends
one, and the mean, std and image size the model's user gave. `resolve` finds that model on another machine: in
models/, in the user models folder, or as a file the command line names (added as the recipe says it is fed); a file
with other weights is refused in one line. Recipes with a `checkpoint` path, written before, are read as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from explorer.compress.recipe import Recipe
from explorer.core.card import ModelCard
from explorer.core.paths import baseline_path, user_file
from explorer.models import baselines, user
from explorer.models.feeding import card_of, given_of, given_words

FILE_HINT = "give its weights file with --checkpoint FILE"


def shared(recipe: Mapping[str, Any], card: ModelCard, ran: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The recipe as it travels: the model by name and sha256, no server path, the fine-tuning subset and the
    preprocessing stated. `ran` is the run's RunResult where there is one: the weights and preprocessing it was
    measured with are those of its record (the card may describe a file replaced since)."""
    ran = ran or {}
    digest = ran.get("baseline_sha256") or card.get("sha256")
    record = ran.get("preprocessing") or {}
    given = record["given"] if "given" in record else given_of(card)
    source = (card.get("source") or {}).get("sha256") if digest == card.get("sha256") else None
    n = recipe.get("finetune_samples", card.get("finetune_samples"))
    out = {"model": recipe["model"], "dataset": recipe.get("dataset", "digits"), "baseline": card.get("name"),
           **({"sha256": digest} if digest else {}),
           **({"source_sha256": source} if source and source != digest else {}), **given,
           "seed": recipe.get("seed", 0), **({"finetune_samples": n} if n is not None else {}),
           "steps": recipe.get("steps", []), **({"name": recipe["name"]} if recipe.get("name") else {})}
    return {k: v for k, v in out.items() if v is not None}


def shared_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """The travelling recipe of a stored run; the stored recipe itself where its model's card is gone."""
    card = card_of(result)
    return result["recipe"] if card is None else shared(result["recipe"], card, result)


def is_users(recipe: Mapping[str, Any]) -> bool:
    """Whether a stored recipe's model is one a user added (its file is theirs), not a committed baseline."""
    return recipe.get("checkpoint") is not None


def command(recipe: Mapping[str, Any], users: bool) -> tuple[str, str]:
    """The command that reproduces a travelling recipe on a machine with the model's file, and what FILE is in it."""
    if users:
        return ("python -m explorer run --recipe recipe.json --checkpoint FILE",
                f", FILE being the model's weights file (sha256 "
                f"{str(recipe.get('source_sha256') or recipe.get('sha256'))[:12]}...)")
    return "python -m explorer run --recipe recipe.json", " (it finds the model in models/ by its sha256)"


# ---------------------------------------------------------------- finding a recipe's model


def _digests(card: ModelCard) -> set[str]:
    return {d for d in (card.get("sha256"), (card.get("source") or {}).get("sha256")) if d}


def _wanted(recipe: Recipe) -> set[str]:
    return {d for d in (recipe.sha256, recipe.source_sha256) if d}


def resolve(recipe: Recipe, checkpoint: str | None = None, *, arch: str | None = None, dataset: str | None = None,
            root: str | None = None, trust_code: bool = False,
            on_wait: Callable[[int], None] | None = None) -> Recipe:
    """The recipe with the path of its model on this machine. A recipe with a path, or naming a committed baseline
    by its architecture alone, is used as it is; one naming its weights by sha256 gets the model here with those
    weights and that preprocessing; `checkpoint` (a file the user names) is added as the recipe says it is fed,
    and refused in one line where its sha256 is not the recipe's."""
    if checkpoint is not None:
        return _from_file(recipe, checkpoint, arch, dataset, root, trust_code, on_wait)
    if recipe.checkpoint is not None or not _wanted(recipe):
        return recipe
    named = f"the recipe's model {recipe.baseline!r}" if recipe.baseline else "the recipe's model"
    stated = recipe.preprocessing()
    here = [c for c in baselines.list_baselines() + user.list_user_models()
            if _digests(c) & _wanted(recipe) and c.get("dataset") == recipe.dataset
            and c.get("architecture") == recipe.model]
    fits = sorted((c for c in here if given_of(c) == stated),
                  key=lambda c: (c.get("name") != recipe.baseline, bool(c.get("user"))))
    if not fits:
        where = f"{baselines.MODELS_DIR} or {user.user_models_dir()}"
        if here:
            raise ValueError(f"{named} is fed {given_words(stated)}, but the model here with its weights "
                             f"({here[0].get('name')!r}) is fed {given_words(given_of(here[0]))}: {FILE_HINT} to add "
                             "it as the recipe says")
        raise ValueError(f"{named} ({recipe.model} on {recipe.dataset}, sha256 {recipe.sha256 or recipe.source_sha256}"
                         f") is not on this machine: no model in {where} has these weights; {FILE_HINT}")
    card = fits[0]
    committed = not card.get("user") and Path(card["path"]) == baseline_path(recipe.model, recipe.dataset)
    return dataclasses.replace(recipe, checkpoint=None if committed else card["path"])


def _from_file(recipe: Recipe, checkpoint: str, arch: str | None, dataset: str | None, root: str | None,
               trust_code: bool, on_wait: Callable[[int], None] | None) -> Recipe:
    if _wanted(recipe):
        user_file(checkpoint, "checkpoint")
        digest = baselines.sha256_file(checkpoint)
        if digest not in _wanted(recipe):
            named = f"the recipe's model {recipe.baseline!r}" if recipe.baseline else "the recipe's model"
            raise ValueError(f"checkpoint {checkpoint!r} holds other weights than {named}: its sha256 is "
                             f"{digest[:16]}..., the recipe's {(recipe.source_sha256 or recipe.sha256 or '')[:16]}...; "
                             "the figures would be another model's")
    arch = arch or (None if recipe.model == "onnx" else recipe.model)
    card = user.add_model(checkpoint, arch=arch, dataset=dataset or recipe.dataset, root=root,
                          image_size=recipe.image_size, mean=recipe.mean, std=recipe.std, trust_code=trust_code,
                          file_name=True, on_wait=on_wait)
    return dataclasses.replace(recipe, model=card["architecture"], dataset=card["dataset"], checkpoint=card["path"],
                               baseline=card["name"], sha256=card["sha256"], source_sha256=None)
