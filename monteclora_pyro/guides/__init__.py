"""Guides built from a :class:`~monteclora_pyro.models.MonteCLoRAModel`."""

from monteclora_pyro.guides.lora import LoRAGuide
from monteclora_pyro.guides.monteclora import MonteCLoRAGuide

__all__ = ["LoRAGuide", "MonteCLoRAGuide"]
