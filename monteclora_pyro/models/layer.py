"""LoRA linear layers whose A matrix can carry a sampled perturbation, and their injection."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

DEFAULT_TARGETS = {
    ("query", "value"): ("bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie"),
    ("q_proj", "v_proj"): (
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "phi3",
        "olmo",
        "smollm3",
        "opt",
        "bart",
    ),
    ("q_lin", "v_lin"): ("distilbert",),
}
HEAD_NAMES = ("pre_classifier", "classifier", "score", "classification_head")


class MonteCLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus the adapter ``s · B · (μ + δ)``.

    ``lora_A`` holds μ, the posterior mean of A (LoRA's Kaiming initialisation), ``lora_B``
    holds B (zeros). ``delta`` is the perturbation δ = ε Σ_k π_k Z_kᵀ of the current draw; it is
    set by :class:`~monteclora_pyro.models.MonteCLoRAModel` for one forward pass and is ``None``
    otherwise, which gives the posterior-mean (plain LoRA) output.
    """

    def __init__(self, base: nn.Linear, r: int, lora_alpha: float, lora_dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.r = r
        self.scaling = lora_alpha / r
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.delta: torch.Tensor | None = None
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            if self.delta is not None:
                raise RuntimeError("cannot apply a sampled perturbation to a merged adapter")
            return out
        a = self.lora_A if self.delta is None else self.lora_A + self.delta
        return out + (self.lora_dropout(x) @ a.t() @ self.lora_B.t()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the posterior-mean adapter s·B·μ into the frozen weight."""
        if not self.merged:
            self.base.weight += self.scaling * self.lora_B @ self.lora_A
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        if self.merged:
            self.base.weight -= self.scaling * self.lora_B @ self.lora_A
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}"


def linear_module_names(model: nn.Module) -> list[str]:
    """Paths of every ``nn.Linear`` in ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def default_target_modules(model: nn.Module) -> list[str]:
    """The architecture's default adapted layers (docs/design.md §6)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for names, types in DEFAULT_TARGETS.items():
        if model_type in types:
            return list(names)
    suffixes = {name.rsplit(".", 1)[-1] for name in linear_module_names(model)}
    for names in DEFAULT_TARGETS:
        if set(names) <= suffixes:
            return list(names)
    raise ValueError(
        f"no default target_modules for model_type={model_type!r}; pass target_modules "
        f"explicitly, choosing among the linear modules {sorted(suffixes)}"
    )


def match_target_modules(model: nn.Module, target_modules: list[str] | str) -> list[str]:
    """Resolve ``target_modules`` to module paths, with PEFT's matching rules.

    A list matches module paths equal to a name or ending with ``"." + name``; a string is a
    regular expression that must match the whole path. Every listed name must match at least
    one ``nn.Linear``.
    """
    linears = linear_module_names(model)
    if isinstance(target_modules, str):
        matched = [name for name in linears if re.fullmatch(target_modules, name)]
        if not matched:
            raise ValueError(
                f"target_modules regex {target_modules!r} matches no linear module; "
                f"linear modules are {_describe(linears)}"
            )
        return matched
    matched = []
    for target in target_modules:
        hits = [n for n in linears if n == target or n.endswith("." + target)]
        if not hits:
            raise ValueError(
                f"target module {target!r} is not a linear module of "
                f"{type(model).__name__}; linear modules are {_describe(linears)}"
            )
        matched.extend(h for h in hits if h not in matched)
    return sorted(matched, key=linears.index)


def default_modules_to_save(model: nn.Module) -> list[str]:
    """Top-level classification heads present in ``model``."""
    children = dict(model.named_children())
    return [name for name in HEAD_NAMES if name in children]


def inject_adapters(
    model: nn.Module, paths: list[str], r: int, lora_alpha: float, lora_dropout: float
) -> dict[str, MonteCLoRALinear]:
    """Replace each ``nn.Linear`` at ``paths`` by a :class:`MonteCLoRALinear` wrapping it."""
    layers = {}
    for path in paths:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        base = getattr(parent, child)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{path} is a {type(base).__name__}, not an nn.Linear")
        layer = MonteCLoRALinear(base, r, lora_alpha, lora_dropout)
        setattr(parent, child, layer)
        layers[path] = layer
    return layers


def _describe(linears: list[str]) -> str:
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in linears})
    return f"(by name) {', '.join(suffixes)}; e.g. paths {', '.join(linears[:4])}"
