"""Recipes: tuned presets of model, data options, optimizer, schedule and epochs.

A recipe is a partial config; flags given explicitly override it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from torchsmith.errors import UsageError


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config: dict[str, Any]


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in [
        Recipe(
            "mnist-sample",
            "the embedded default: SimpleNet on the bundled MNIST sample, AdamW + cosine, 8 epochs",
            {
                "model": {"name": "simplenet"},
                "data": {"name": "mnist-sample"},
                "optim": {"name": "adamw", "lr": 2e-3, "scheduler": "cosine"},
                "train": {"max_epochs": 8, "batch_size": 64},
            },
        ),
    ]
}


def recipe_config(name: str) -> dict[str, Any]:
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"unknown recipe '{name}'.{hint} Known recipes: {', '.join(RECIPES)}")
    return RECIPES[name].config
