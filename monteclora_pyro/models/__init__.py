"""Pyro models: the MonteCLoRA priors and likelihood over LoRA adapters."""

from monteclora_pyro.models.distributions import (
    IIDMultivariateNormal,
    Wishart,
    kl_iid_mvn,
    kl_wishart_wishart,
)
from monteclora_pyro.models.layer import MonteCLoRALinear
from monteclora_pyro.models.model import MonteCLoRAModel

__all__ = [
    "IIDMultivariateNormal",
    "MonteCLoRALinear",
    "MonteCLoRAModel",
    "Wishart",
    "kl_iid_mvn",
    "kl_wishart_wishart",
]
