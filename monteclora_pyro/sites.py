"""Stable names: Pyro sites, their kinds and the loss terms (they become ArviZ variable names).

A latent site of the adapted layer at module path ``layer`` is named ``"{layer}.{kind}"``,
e.g. ``"bert.encoder.layer.0.attention.self.query.covariance"``. This module depends on
nothing, so that the analysis can parse names without importing the model.
"""

from __future__ import annotations

LATENT_KINDS = ("covariance", "concentration", "weights", "noise", "precision", "A")
HYPERPRIOR_KINDS = ("covariance", "concentration", "weights", "precision")
LARGE_KINDS = ("noise", "A")  # K·d_in·r or d_in·r entries per layer: draws are not saved
OBSERVED_SITE = "y"
COOPERATIVE_SITE = "cooperative"
DATA_PLATE = "data"
TERMS = (
    "nll",
    "kl_covariance",
    "kl_concentration",
    "kl_weights",
    "kl_noise",
    "cooperative",
    "kl_precision",
    "kl_A",
)


def site_name(layer: str, kind: str) -> str:
    """Name of the latent site ``kind`` of the adapted ``layer``, e.g. ``"...query.noise"``."""
    return f"{layer}.{kind}"


def split_site_name(name: str) -> tuple[str, str]:
    """``(layer, kind)`` of a latent site name: the inverse of :func:`site_name`."""
    layer, _, kind = name.rpartition(".")
    return layer, kind
