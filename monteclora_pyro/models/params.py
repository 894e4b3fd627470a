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
    A frozen parameter stays frozen (the store would switch its gradient on).
    """
    store = pyro.get_param_store()
    for name, value in named:
        requires_grad = value.requires_grad
        if name in store and store[name] is not value:
            store[name] = value
        pyro.param(name, value)
        value.requires_grad_(requires_grad)


def restore_parameters(
    named: Iterable[tuple[str, nn.Parameter]] | dict, tensors: dict, source: str | Path
) -> None:
    """Copy ``tensors`` into the named parameters, checking names and shapes first."""
    named = dict(named)
    missing = sorted(set(named) - set(tensors))
    unexpected = sorted(set(tensors) - set(named))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    for name, param in named.items():
        if tensors[name].shape != param.shape:
            raise ValueError(
                f"{source}: {name} has shape {tuple(tensors[name].shape)}, "
                f"the model expects {tuple(param.shape)}"
            )
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(tensors[name])
