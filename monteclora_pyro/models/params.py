"""Registration of module parameters with Pyro's param store, and their restoration."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyro
import torch
from torch import nn


def register_params(named: Iterable[tuple[str, nn.Parameter]]) -> None:
    """Expose parameters owned by torch modules to Pyro as ``param`` sites.

    The module stays the owner: if the store holds another tensor under the same name (a
    model built anew without clearing the store), it is replaced by the module's parameter.
    """
    store = pyro.get_param_store()
    for name, value in named:
        if name in store and store[name] is not value:
            store[name] = value
        pyro.param(name, value)


def restore_parameters(
    named: dict[str, nn.Parameter], saved: dict[str, torch.Tensor], source: str | Path
) -> None:
    """Copy ``saved`` into the parameters ``named``, refusing other names or shapes."""
    if set(saved) != set(named) or any(named[k].shape != v.shape for k, v in saved.items()):
        raise ValueError(f"checkpoint {source} does not match the model's parameters")
    with torch.no_grad():
        for name, value in saved.items():
            named[name].copy_(value)
