"""Stable names: Pyro sites, their kinds and the loss terms (they become ArviZ variable names).

A latent site of the adapted layer at module path ``layer`` is named ``"{layer}.{kind}"``,
e.g. ``"bert.encoder.layer.0.attention.self.query.covariance"``. A latent site of the likelihood
itself is named in the same way with the observed site as its scope, ``"y.{kind}"``, e.g.
``"y.obs_precision"`` (the precision τ of a Normal likelihood); its kinds are
:data:`LIKELIHOOD_KINDS`, distinct from the layers' kinds, so that a kind (and the loss term
``"kl_" + kind``) names one thing. This module depends on nothing, so that the analysis can
parse names without importing the model.
"""

from __future__ import annotations

LIKELIHOOD_KINDS = ("obs_precision",)  # sites "y.{kind}" of the likelihood, not of a layer
LATENT_KINDS = (
    "covariance",
    "concentration",
    "weights",
    "noise",
    "precision",
    "A",
    *LIKELIHOOD_KINDS,
)
HYPERPRIOR_KINDS = ("covariance", "concentration", "weights", "precision", "obs_precision")
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
    "kl_obs_precision",
)


def site_name(layer: str, kind: str) -> str:
    """Name of the latent site ``kind`` of the adapted ``layer``, e.g. ``"...query.noise"``."""
    return f"{layer}.{kind}"


def likelihood_site_name(kind: str) -> str:
    """Name of the likelihood's latent site ``kind``, e.g. ``"y.obs_precision"``."""
    return site_name(OBSERVED_SITE, kind)


def is_likelihood_site(name: str) -> bool:
    """Whether ``name`` is a latent site of the likelihood rather than of an adapted layer."""
    scope, kind = split_site_name(name)
    return scope == OBSERVED_SITE and kind in LIKELIHOOD_KINDS


def split_site_name(name: str) -> tuple[str, str]:
    """``(layer, kind)`` of a latent site name: the inverse of :func:`site_name`."""
    layer, _, kind = name.rpartition(".")
    return layer, kind
