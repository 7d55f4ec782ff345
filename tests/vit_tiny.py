"""A tiny Vision Transformer from the zoo's `vit` entry (8x8 digits in 4 patches of 4x4, width 32, 2 blocks of 4
heads), trained briefly so its predictions mean something: the transformer tests share it."""

import functools

import torch

from explorer.core.data import load_dataset
from explorer.core.train import TrainConfig, fit
from explorer.core.zoo import create_model

ARCH = {"name": "vit", "kwargs": {"num_classes": 10, "in_channels": 1, "image_size": 8, "patch_size": 4,
                                  "embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0}}


@functools.cache
def digits():
    return load_dataset("digits")


def fresh(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(ARCH["name"], **ARCH["kwargs"]).eval()


@functools.cache
def _trained_state() -> dict:
    m = fresh()
    fit(m, digits().train, TrainConfig(epochs=4, lr=3e-3, seed=0))
    return {k: v.clone() for k, v in m.state_dict().items()}


def trained() -> torch.nn.Module:
    """A fresh copy each call (techniques and tests may not share one model)."""
    m = fresh()
    m.load_state_dict(_trained_state())
    return m.eval()
