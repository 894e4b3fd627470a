"""Posterior analysis of finished runs (reads their files; never imports training code).

- :mod:`~monteclora_pyro.analysis.inference_data`: ArviZ InferenceData and diagnostics
  (chains are independent restarts).
- :mod:`~monteclora_pyro.analysis.heldout`: held-out lppd, mutual information, plug-in
  against predictive.
- :mod:`~monteclora_pyro.analysis.convergence`: the convergence records of the history.
- :mod:`~monteclora_pyro.analysis.prior_note`: the cooperative tilt the prior draws omit.
- :mod:`~monteclora_pyro.analysis.run_data`: what a run directory holds.
- :mod:`~monteclora_pyro.analysis.summary`: the summary tables;
  :mod:`~monteclora_pyro.analysis.tables`: the table formatter.
- :mod:`~monteclora_pyro.analysis.plots`: the figures.
- :mod:`~monteclora_pyro.analysis.report`, :mod:`~monteclora_pyro.analysis.html`: the HTML report.
- :mod:`~monteclora_pyro.analysis.analyze`: all of it for ``monteclora analyze``.
"""

import warnings

with warnings.catch_warnings():
    # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning on import; say it once here.
    warnings.simplefilter("ignore", FutureWarning)
    import arviz  # noqa: F401

from monteclora_pyro.analysis.inference_data import (
    save_inference_data,
    to_inference_data,
)

__all__ = ["save_inference_data", "to_inference_data"]
