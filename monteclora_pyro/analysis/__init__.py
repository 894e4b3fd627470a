"""Posterior analysis: ArviZ conversion, metrics and plots (never imports training code)."""

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
