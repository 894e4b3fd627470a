"""MonteCLoRA: Bayesian Monte Carlo low-rank adaptation as a Pyro program."""

from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.guides import LoRAGuide, MonteCLoRAGuide
from monteclora_pyro.infer import elbo_terms
from monteclora_pyro.io import load_adapter, save_adapter
from monteclora_pyro.models import MonteCLoRAModel

__all__ = [
    "LoRAGuide",
    "MonteCLoRAConfig",
    "MonteCLoRAGuide",
    "MonteCLoRAModel",
    "elbo_terms",
    "load_adapter",
    "save_adapter",
]
__version__ = "0.1.0"
