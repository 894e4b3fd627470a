"""The MonteCLoRA generative model over the LoRA adapters of a Hugging Face model."""

from __future__ import annotations

import functools
import weakref
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
    ``{path}.concentration``, ``{path}.weights`` and ``{path}.noise``, the likelihood's own
    latent sites (``"y.{kind}"``, e.g. the observation precision of ``likelihood="regression"``),
    the cooperative factor and the observed site ``y`` under a data plate scaled to
    ``num_data``.

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
        (``"classification"``, ``"multiple_choice"``, ``"next_token"``, ``"regression"``) or a
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
        self._likelihood_priors: dict = {}
        self._plug_in_source: weakref.ref | None = None

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
        """Scale of the latent sites: the objective's (η·N/L for the paper's, T for the ELBO's)."""
        return self.objective.latent_scale(self)

    def sample_latents(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Sample every latent site (unscaled): the layers', then the likelihood's.

        Returns a draw (the perturbation δ of A keyed by layer path, and the value of each of
        the likelihood's latent sites keyed by site name) and the mixture weights π by layer.
        """
        draw, weights = self.objective.sample_latents(self)
        for name, prior in self.likelihood_priors().items():
            draw[name] = pyro.sample(name, prior)
        return draw, weights

    def perturbations(self, samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The draw of latent-site values (e.g. what a guide returns) that :meth:`logits`
        takes: δ per layer, and the likelihood's latent sites by name."""
        draw = self.objective.perturbations(self, samples)
        draw.update({name: samples[name] for name in self.likelihood_sites})
        return draw

    def likelihood_priors(self) -> dict:
        """The priors of the likelihood's latent sites by name, cached per device and dtype."""
        weight = next(iter(self.adapters.values())).lora_A
        key = (weight.device, weight.dtype)
        if key not in self._likelihood_priors:
            self._likelihood_priors[key] = self.likelihood.latent_priors(*key)
        return self._likelihood_priors[key]

    @property
    def likelihood_sites(self) -> tuple[str, ...]:
        """Names of the likelihood's latent sites (none for the categorical likelihoods)."""
        return tuple(self.likelihood_priors())

    def set_plug_in_source(self, guide: nn.Module) -> None:
        """Take the plug-in values of the likelihood's latent sites from ``guide``.

        Its ``plug_in_latents()`` is asked at each plug-in prediction (the guide is held
        weakly); the guides call this when they are built.
        """
        self._plug_in_source = weakref.ref(guide)

    def plug_in_latents(self) -> dict[str, torch.Tensor]:
        """The likelihood's latent values of a prediction without them (the plug-in).

        Those of the guide set by :meth:`set_plug_in_source` (the guide's means, or LoRA's
        point estimates), else the prior means.
        """
        guide = None if self._plug_in_source is None else self._plug_in_source()
        if guide is not None:
            return guide.plug_in_latents()
        return {name: prior.mean for name, prior in self.likelihood_priors().items()}

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **model_inputs,
    ) -> torch.Tensor:
        """Run the model: sample the adapters, the backbone and the observed labels.

        Returns what :meth:`logits` returns for this draw (its δ and likelihood latents).
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
        """Scores of the backbone at a draw (none: the plug-in prediction).

        ``deltas`` is a draw as :meth:`perturbations` gives it: δ of A by layer path (a layer
        left out has A = μ) and values of the likelihood's latent sites by name (one left out
        takes :meth:`plug_in_latents`).

        What the likelihood observes (:meth:`Likelihood.scores`): logits (batch, num_labels)
        for classification; for multiple choice the (batch, C) summed answer log-probabilities
        (``-inf`` for padded choices); for next-token the token logits (batch, L, vocabulary);
        for regression the mean and the precision (batch, 2) of each example's Normal.
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **model_inputs}
        draw = deltas or {}
        adapters = {k: v for k, v in draw.items() if k in self.adapters}
        latents = {k: v for k, v in draw.items() if k not in self.adapters}
        sites = self.likelihood_sites
        unknown = [k for k in latents if k not in sites]
        if unknown:
            raise ValueError(
                f"{unknown} are neither adapted layers nor latent sites of the "
                f"{self.likelihood.name} likelihood"
            )
        if len(latents) < len(sites):
            latents = {**self.plug_in_latents(), **latents}
        backbone = functools.partial(self._backbone, adapters)
        return self.likelihood.scores(backbone, inputs, latents)

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
