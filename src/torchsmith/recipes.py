"""Recipes: tuned presets of model, data options, optimizer, schedule and epochs.

A recipe is a partial config; flags given explicitly override it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchsmith.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config: dict[str, Any]


# What the airbench recipes share: Nesterov SGD in airbench's units with a triangular schedule,
# and lookahead averaging, TTA, the whitening bias frozen after 3 epochs, the sync-free guard.
_AIRBENCH_OPTIM: dict[str, Any] = {
    "name": "airbench-sgd",
    "momentum": 0.85,
    "label_smoothing": 0.2,
    "scheduler": "linear",
    "warmup_start_ratio": 0.2,
    "min_lr_ratio": 0.07,
}
_AIRBENCH_TRAIN: dict[str, Any] = {
    "batch_size": 1024,
    "eval_batch_size": 2000,
    "ema_decay": 0.95,
    "ema_every": 5,
    "ema_lookahead": True,
    "ema_warmup_power": 3.0,
    "tta": "flip-translate",
    "freeze_whitening_bias_after": 3,
    "channels_last": True,
    "log_every": 100,
    "nan_check_every": 50,
}

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
        Recipe(
            "mnist-fast",
            "99 % on MNIST in seconds on a small CPU: convbn (16/32) in memory, AdamW + one-cycle, "
            "label smoothing, 650 steps of 128",
            {
                "model": {"name": "convbn", "args": {"widths": [16, 32]}},
                "data": {"name": "mnist", "val_fraction": 0.0},
                "optim": {
                    "name": "adamw",
                    "lr": 0.03,
                    "weight_decay": 0.0,
                    "scheduler": "onecycle",
                    "label_smoothing": 0.1,
                },
                "train": {
                    "max_epochs": 2,
                    "max_steps": 650,
                    "batch_size": 128,
                    # 256, not the default 1000: on a CPU the test pass took half the time (1000
                    # images of activations per layer fall out of the cache)
                    "eval_batch_size": 256,
                    "channels_last": True,
                    "log_every": 100,
                },
            },
        ),
        Recipe(
            "sst2-fast",
            "BiLSTM (embeddings 128, hidden 192) with max pooling on SST-2 words and their hashed character "
            "n-grams, batches grouped by length, AdamW lr 3e-3 + cosine, 4 epochs",
            {
                "model": {"name": "bilstm", "args": {"embed_dim": 128, "hidden_dim": 192, "dropout": 0.4}},
                "data": {"name": "sst2", "val_fraction": 0.05, "options": {"max_len": 64, "subwords": 20000}},
                "optim": {
                    "name": "adamw",
                    "lr": 3e-3,
                    "weight_decay": 0.01,
                    "scheduler": "cosine",
                    "min_lr_ratio": 0.005,
                },
                "train": {"max_epochs": 4, "batch_size": 64, "group_by_length": True, "monitor": "val_accuracy"},
            },
        ),
        Recipe(
            "shakespeare-char",
            "gpt (4 layers, 128 wide, context 128 characters, rotary positions) on Tiny Shakespeare, bf16, "
            "AdamW (beta2 0.99) lr 3e-3 cosine to 3e-4",
            {
                "model": {
                    "name": "gpt",
                    "args": {"num_layers": 4, "num_heads": 4, "embed_dim": 128, "positions": "rotary"},
                },
                "data": {"name": "tinyshakespeare", "val_fraction": 0.1, "options": {"block_size": 128}},
                "optim": {
                    "name": "adamw",
                    "lr": 3e-3,
                    "beta2": 0.99,
                    "weight_decay": 0.1,
                    "scheduler": "cosine",
                    "warmup_steps": 100,
                    "min_lr_ratio": 0.1,
                },
                "train": {
                    "max_epochs": 100,
                    "max_steps": 3000,
                    "batch_size": 32,
                    "precision": "bf16",
                    "clip_grad_norm": 1.0,
                    "log_every": 100,
                },
            },
        ),
        Recipe(
            "fsdd-fast",
            "AudioCNN on spoken digits (FSDD log-mel), shift/tempo/warp/masking, AdamW + one-cycle, 16 epochs",
            {
                "model": {"name": "audiocnn", "args": {"width": 24}},
                "data": {"name": "fsdd", "augment": "on"},
                "optim": {"name": "adamw", "lr": 4e-3, "weight_decay": 0.05, "scheduler": "onecycle"},
                "train": {"max_epochs": 16, "batch_size": 64},
            },
        ),
        Recipe(
            "cifar10-fast",
            "SpeedNet on CIFAR-10 with airbench94's recipe: whitening init, Nesterov SGD, label smoothing, "
            "lookahead averaging, flip+translate, TTA; bf16 on GPU",
            {
                "model": {"name": "speednet", "init": "whitening"},
                "data": {"name": "cifar10", "augment": "flip-translate", "val_fraction": 0.0},
                "optim": {**_AIRBENCH_OPTIM, "lr": 11.5, "weight_decay": 0.0153, "warmup_fraction": 0.23},
                "train": {**_AIRBENCH_TRAIN, "max_epochs": 10, "max_steps": 485},
            },
        ),
        Recipe(
            "cifar10-accurate",
            "SpeedNet at airbench96's size (128/512/512, residual blocks of three convs) on CIFAR-10: "
            "cutout 12, translate 4, 40 epochs, lookahead, TTA; bf16 on GPU",
            {
                "model": {
                    "name": "speednet",
                    "init": "whitening",
                    "args": {"widths": [128, 512, 512], "depth": 3, "residual": True, "bn_momentum": 0.1},
                },
                "data": {"name": "cifar10", "augment": "flip-translate4-cutout12", "val_fraction": 0.0},
                "optim": {
                    **_AIRBENCH_OPTIM,
                    "lr": 9.0,
                    "weight_decay": 0.012,
                    "warmup_fraction": 0.1,
                    "min_lr_ratio": 0.0,
                },
                "train": {**_AIRBENCH_TRAIN, "max_epochs": 40, "max_steps": 1920},
            },
        ),
    ]
}


def recipe_config(name: str) -> dict[str, Any]:
    if name not in RECIPES:
        hint = did_you_mean(name, RECIPES)
        raise UsageError(f"unknown recipe '{name}'.{hint} Known recipes: {', '.join(RECIPES)}")
    return RECIPES[name].config
