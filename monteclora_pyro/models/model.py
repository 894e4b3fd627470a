"""The MonteCLoRA generative model over the LoRA adapters of a Hugging Face model."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.models.layer import (
    MonteCLoRALinear,
    default_target_modules,
    inject_adapters,
    match_target_modules,
)
from monteclora_pyro.models.likelihood import Likelihood, resolve_likelihood
from monteclora_pyro.models.objectives import OBJECTIVES
from monteclora_pyro.models.params import register_params
from monteclora_pyro.sites import COOPERATIVE_SITE


class MonteCLoRAModel(PyroModule):
    """MonteCLoRA as a Pyro model (docs/design.md §2 and §4).

    Wraps the target ``nn.Linear`` modules of ``hf_model`` in place with
    :class:`~monteclora_pyro.models.layer.MonteCLoRALinear`, freezes every other weight except
    the task head, and defines per adapted layer the latent sites ``{path}.covariance``,
    ``{path}.concentration``, ``{path}.weights`` and ``{path}.noise``, the cooperative factor
    and the observed site ``y`` under a data plate scaled to ``num_data``.

    Parameters
    ----------
    hf_model : transformers.PreTrainedModel
        A sequence classifier whose forward returns an object with ``logits``, or a causal
        language model (with ``likelihood="multiple_choice"`` or ``"next_token"``).
    config : MonteCLoRAConfig, optional
        Defaults to ``MonteCLoRAConfig()``.
    num_data : int
        Size N of the training set (examples: questions, or sequences); minibatch likelihoods
        are scaled to it.
    likelihood : str or Likelihood, optional
        What ``y`` observes: a name of :data:`~monteclora_pyro.models.likelihood.LIKELIHOODS`
        (``"classification"``, ``"multiple_choice"``, ``"next_token"``) or a
        :class:`~monteclora_pyro.models.likelihood.Likelihood`. ``None`` means classification,
        and is refused for a causal language model. For the causal likelihoods
        ``modules_to_save`` defaults to none: no head is trained.
    """

    def __init__(
        self,
        hf_model: nn.Module,
        config: MonteCLoRAConfig | None = None,
        *,
        num_data: int,
        likelihood: str | Likelihood | None = None,
    ):
        super().__init__()
        config = MonteCLoRAConfig() if config is None else config
        if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
            raise ValueError(f"num_data={num_data!r} is invalid: it must be a positive integer")
        likelihood = resolve_likelihood(hf_model, likelihood)
        self.config = config
        self.num_data = num_data
        self.num_labels = likelihood.num_labels(hf_model)
        self.likelihood = likelihood
        self.objective = OBJECTIVES[config.objective]
        self.kl_factor = 1.0
        targets = config.target_modules or default_target_modules(hf_model)
        paths = match_target_modules(hf_model, targets)
        heads = (
            config.modules_to_save
            if config.modules_to_save is not None
            else likelihood.default_heads(hf_model)
        )
        children = [name for name, _ in hf_model.named_modules() if name]
        for head in heads:
            if head not in children:
                raise ValueError(
                    f"modules_to_save entry {head!r} is not a module of {type(hf_model).__name__}; "
                    f"top-level modules are {[n for n, _ in hf_model.named_children()]}"
                )
        hf_model.requires_grad_(False)
        self.adapters = inject_adapters(
            hf_model, paths, config.r, config.lora_alpha, config.lora_dropout
        )
        self.head_names = list(heads)
        for head in heads:
            hf_model.get_submodule(head).requires_grad_(True)
        for layer in self.adapters.values():
            layer.lora_A.requires_grad_(True)
            layer.lora_B.requires_grad_(True)
        self.backbone = hf_model
        self._priors: dict = {}

    @property
    def hf_model(self) -> nn.Module:
        """The wrapped Hugging Face model."""
        # Read from _modules directly: PyroModule.__getattr__ would call pyro.module() on it and
        # register (and warn about) every frozen backbone weight.
        return self._modules["backbone"]

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Point-estimated parameters (μ, B and the head), named as in the param store."""
        for path, layer in self.adapters.items():
            yield f"{path}.lora_A", layer.lora_A
            yield f"{path}.lora_B", layer.lora_B
        for head in self.head_names:
            for name, param in self.hf_model.get_submodule(head).named_parameters():
                yield f"{head}.{name}", param

    @property
    def latent_scale(self) -> float:
        """Scale of the latent sites: the objective's (η·N/L for the paper's, T for the ELBO's),
        times ``kl_factor`` (a KL warm-up sets it below 1 early in training)."""
        return self.objective.latent_scale(self) * self.kl_factor

    def sample_latents(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Sample every latent site (unscaled).

        Returns the perturbation δ of A and the mixture weights π, each keyed by layer path.
        """
        return self.objective.sample_latents(self)

    def perturbations(self, samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """δ per layer from a dictionary of latent-site values (e.g. what a guide returns)."""
        return self.objective.perturbations(self, samples)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **model_inputs,
    ) -> torch.Tensor:
        """Run the model: sample the adapters, the backbone and the observed labels.

        Returns what :meth:`logits` returns for this draw.
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **model_inputs}
        if labels is not None:
            self.likelihood.check_labels(labels, inputs, self.num_labels)
        register_params(self.trainable_parameters())
        with poutine.scale(scale=self.latent_scale):
            deltas, weights = self.sample_latents()
        cfg = self.config
        if cfg.cooperative_weight > 0:
            # Σ_k π_k² - 1/K: zero at uniform weights, so a pinned LoRA guide pays nothing.
            excess = sum(pi.pow(2).sum(-1) - 1.0 / cfg.num_components for pi in weights.values())
            scale = cfg.cooperative_weight * self.num_data / len(self.adapters)
            pyro.factor(COOPERATIVE_SITE, -scale * excess)
        logits = self.logits(input_ids, attention_mask, deltas=deltas, **model_inputs)
        self.likelihood.observe(logits, labels, inputs, self.num_data)
        return logits

    def logits(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        deltas: dict[str, torch.Tensor] | None = None,
        **model_inputs,
    ) -> torch.Tensor:
        """Scores of the backbone with the given perturbations of A (none: posterior mean).

        What the likelihood observes (:meth:`Likelihood.scores`): logits (batch, num_labels)
        for classification; for multiple choice the (batch, C) summed answer log-probabilities
        (``-inf`` for padded choices); for next-token the token logits (batch, L, vocabulary).
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **model_inputs}
        return self.likelihood.scores(functools.partial(self._backbone, deltas or {}), inputs)

    def _backbone(self, deltas: dict[str, torch.Tensor], **inputs) -> torch.Tensor:
        """Logits of the wrapped model with A = μ + δ in the layers of ``deltas``."""
        try:
            for path, delta in deltas.items():
                self.adapters[path].delta = delta
            out = self.hf_model(**inputs)
        finally:
            for path in deltas:
                self.adapters[path].delta = None
        if isinstance(out, torch.Tensor):
            return out
        return out.logits if hasattr(out, "logits") else out[0]

    def prior(self, path: str, layer: MonteCLoRALinear) -> dict:
        """The fixed prior distributions of a layer, cached per device and dtype."""
        weight = layer.lora_A
        key = (path, weight.device, weight.dtype)
        if key not in self._priors:
            self._priors[key] = self.objective.priors(
                self.config, layer.in_features, weight.device, weight.dtype
            )
        return self._priors[key]

    def merge_adapters(self) -> None:
        """Merge the posterior-mean adapters into the frozen weights (inference only)."""
        for layer in self.adapters.values():
            layer.merge()

    def unmerge_adapters(self) -> None:
        """Undo :meth:`merge_adapters`."""
        for layer in self.adapters.values():
            layer.unmerge()
