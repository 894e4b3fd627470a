"""Figures for MonteCLoRA posteriors, predictions, training curves and sweeps.

Every function takes data and returns a :class:`matplotlib.figure.Figure` built without
``pyplot`` (no GUI, no global figure registry), so it is safe headless and under any
backend; the caller saves it with ``fig.savefig(path)``. Posterior inputs follow the schema
of :func:`monteclora_pyro.analysis.inference_data.to_inference_data`: one variable per latent
site named ``"{layer path}.{kind}"`` with ``kind`` in ``covariance``, ``concentration``,
``weights`` (``precision`` under ``objective="bayes"``), and the likelihood's own sites
``"y.{kind}"`` (``obs_precision`` of a regression), shown as one more "layer" ``y``.
"""

from monteclora_pyro.analysis.plots._common import KINDS, layer_sites, short_layer_names
from monteclora_pyro.analysis.plots.posterior import (
    PANELS_PER_ROW,
    hyperprior_summaries,
    plot_forest_layers,
    plot_prior_posterior,
    plot_rank,
)
from monteclora_pyro.analysis.plots.predictive import (
    plot_accuracy_coverage,
    plot_interval_coverage,
    plot_reliability,
    plot_uncertainty_histograms,
)
from monteclora_pyro.analysis.plots.sweep import plot_sweep
from monteclora_pyro.analysis.plots.training import plot_training_curves

__all__ = [
    "KINDS",
    "PANELS_PER_ROW",
    "hyperprior_summaries",
    "layer_sites",
    "plot_accuracy_coverage",
    "plot_forest_layers",
    "plot_interval_coverage",
    "plot_prior_posterior",
    "plot_rank",
    "plot_reliability",
    "plot_sweep",
    "plot_training_curves",
    "plot_uncertainty_histograms",
    "short_layer_names",
]
