"""What the saved prior draws leave out: the cooperative tilt of the paper objective.

Under the paper objective (``monteclora.objective == "paper"``, or absent in older runs) with
``cooperative_weight`` λ > 0, the model multiplies the Dirichlet on the mixture weights π of
each layer by ``exp(−(λN/L)(Σ_k π_k² − 1/K))`` (N training examples, L adapted layers). The
draws of ``prior_samples.npz`` come from the plain priors, without that tilt, so a
prior-against-posterior figure must say so (docs/design.md §9.1, finding 3).
"""

from __future__ import annotations

import math

from monteclora_pyro.sites import is_likelihood_site, split_site_name

__all__ = ["TILTED_KINDS", "cooperative_tilt", "num_layers", "tilt_note"]

TILTED_KINDS = ("weights", "concentration")
"""Site kinds whose prior marginal the tilt changes (π directly, α through π's Dirichlet)."""


def num_layers(site_names) -> int:
    """L, the number of distinct adapted layers among latent site names (the likelihood's own
    sites, ``"y.{kind}"``, are not layers)."""
    names = [str(name) for name in site_names]
    return len({split_site_name(name)[0] for name in names if not is_likelihood_site(name)})


def cooperative_tilt(config: dict, metrics: dict, layers: int) -> dict | None:
    """The cooperative tilt a run's saved prior draws omit, or ``None`` when there is none.

    Parameters
    ----------
    config : dict
        The run's ``config.json`` (``monteclora.objective``, ``monteclora.cooperative_weight``).
    metrics : dict
        Its ``metrics.json``; N is read from ``num_train_examples`` (NaN when absent).
    layers : int
        L, the number of adapted layers.

    Returns
    -------
    dict or None
        ``cooperative_weight`` (λ), ``num_train_examples`` (N, or NaN), ``num_layers`` (L) and
        ``tilt_scale`` (λN/L, or NaN); ``None`` under ``objective="bayes"`` or with λ = 0.
    """
    monteclora = config.get("monteclora") or {}
    if (monteclora.get("objective") or "paper") != "paper":
        return None
    weight = monteclora.get("cooperative_weight")
    if not isinstance(weight, int | float) or weight <= 0:
        return None
    n = metrics.get("num_train_examples")
    n = float(n) if isinstance(n, int | float) and n > 0 else math.nan
    scale = float(weight) * n / layers if layers > 0 else math.nan
    return {
        "cooperative_weight": float(weight),
        "num_train_examples": n,
        "num_layers": int(layers),
        "tilt_scale": scale,
    }


def _number(value: float) -> str:
    return f"{value:g}" if math.isfinite(value) else "unknown"


def tilt_note(tilt: dict | None) -> str | None:
    """The plain sentence for a figure or report; ``None`` without a tilt.

    Parameters
    ----------
    tilt : dict or None
        From :func:`cooperative_tilt`.

    Returns
    -------
    str or None
    """
    if tilt is None:
        return None
    layers = tilt["num_layers"]
    n = tilt["num_train_examples"]
    if math.isfinite(n) and layers > 0:
        ratio = f"N/L = {_number(n / layers)}"
    else:
        ratio = "N/L unknown: metrics.json has no num_train_examples"
    return (
        f"prior shown without the cooperative tilt exp(−λN/L (Σπ² − 1/K)) "
        f"(λ = {_number(tilt['cooperative_weight'])}, {ratio}): "
        "the posterior of the weights is pinned by that tilt, not by the data"
    )
