"""Registration of module parameters with Pyro's param store."""

from __future__ import annotations

from collections.abc import Iterable

import pyro
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
