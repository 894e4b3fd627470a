"""The MonteCLoRA generative model over the LoRA adapters of a Hugging Face model."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.models.distributions import IIDMultivariateNormal, Wishart
from monteclora_pyro.models.layer import (
    MonteCLoRALinear,
    default_modules_to_save,
    default_target_modules,
    inject_adapters,
    match_target_modules,
)
from monteclora_pyro.models.likelihood import (
    answer_log_likelihood,
    check_choice_inputs,
    check_token_labels,
    resolve_likelihood,
    shifted_targets,
)
from monteclora_pyro.models.params import register_params
from monteclora_pyro.sites import COOPERATIVE_SITE, DATA_PLATE, OBSERVED_SITE, site_name


class MonteCLoRAModel(PyroModule):
    """MonteCLoRA as a Pyro model (DESIGN.md §2 and §4).

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
    likelihood : {"classification", "multiple_choice", "next_token"}, optional
        What ``y`` observes (:mod:`monteclora_pyro.models.likelihood`). ``None`` means
        classification, and is refused for a causal language model. For the causal
        likelihoods ``modules_to_save`` defaults to none: no head is trained.
    """

    def __init__(
        self,
        hf_model: nn.Module,
        config: MonteCLoRAConfig | None = None,
        *,
        num_data: int,
        likelihood: str | None = None,
    ):
        super().__init__()
        config = MonteCLoRAConfig() if config is None else config
        if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
            raise ValueError(f"num_data={num_data!r} is invalid: it must be a positive integer")
        likelihood = resolve_likelihood(hf_model, likelihood)
        num_labels = getattr(getattr(hf_model, "config", None), "num_labels", None)
        if likelihood != "classification":
            num_labels = None
        elif not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(
                f"the model has num_labels={num_labels!r}: MonteCLoRAModel needs a classifier "
                "with num_labels >= 2 (regression heads are not supported)"
            )
        self.config = config
        self.num_data = num_data
        self.num_labels = num_labels
        self.likelihood = likelihood
        targets = config.target_modules or default_target_modules(hf_model)
        paths = match_target_modules(hf_model, targets)
        if config.modules_to_save is not None:
            heads = config.modules_to_save
        elif likelihood == "classification":
            heads = default_modules_to_save(hf_model)
        else:
            heads = []
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
        """Scale of the latent sites: η·N/L, or 1 for the plain ELBO."""
        eta = self.config.kl_loss_weight
        return 1.0 if eta is None else eta * self.num_data / len(self.adapters)

    def sample_latents(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Sample every latent site (unscaled).

        Returns the perturbation δ of A and the mixture weights π, each keyed by layer path.
        """
        cfg = self.config
        deltas, weights = {}, {}
        for path, layer in self.adapters.items():
            prior = self._prior(path, layer)
            cov = pyro.sample(site_name(path, "covariance"), prior["covariance"])
            if cfg.concentration_prior == "gamma":
                alpha = pyro.sample(site_name(path, "concentration"), prior["concentration"])
            else:
                alpha = prior["concentration"]
            pi = pyro.sample(site_name(path, "weights"), dist.Dirichlet(alpha))
            if "noise" in prior:
                noise_dist = prior["noise"]
            else:
                noise_dist = noise_distribution(cov, cfg, layer.in_features)
            noise = pyro.sample(site_name(path, "noise"), noise_dist)
            deltas[path] = perturbation(pi, noise, cfg)
            weights[path] = pi
        return deltas, weights

    def perturbations(self, samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """δ per layer from a dictionary of latent-site values (e.g. what a guide returns)."""
        return {
            path: perturbation(
                samples[site_name(path, "weights")], samples[site_name(path, "noise")], self.config
            )
            for path in self.adapters
        }

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
        self._check_labels(labels, input_ids, model_inputs)
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
        self._observe(logits, labels, model_inputs.get("choice_mask"))
        return logits

    def logits(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        deltas: dict[str, torch.Tensor] | None = None,
        **model_inputs,
    ) -> torch.Tensor:
        """Logits of the backbone with the given perturbations of A (none: posterior mean).

        Shape (batch, num_labels) for classification; for multiple choice the (batch, C)
        summed answer log-probabilities (``-inf`` for padded choices, see
        :func:`~monteclora_pyro.models.likelihood.answer_log_likelihood`); for next-token the
        token logits (batch, L, vocabulary).
        """
        if self.likelihood == "multiple_choice":
            return self._choice_scores(input_ids, attention_mask, deltas, **model_inputs)
        return self._backbone(input_ids, attention_mask, deltas, **model_inputs)

    def _backbone(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        deltas: dict[str, torch.Tensor] | None,
        **model_inputs,
    ) -> torch.Tensor:
        deltas = deltas or {}
        try:
            for path, delta in deltas.items():
                self.adapters[path].delta = delta
            out = self.hf_model(input_ids=input_ids, attention_mask=attention_mask, **model_inputs)
        finally:
            for path in deltas:
                self.adapters[path].delta = None
        if isinstance(out, torch.Tensor):
            return out
        return out.logits if hasattr(out, "logits") else out[0]

    def _choice_scores(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        deltas: dict[str, torch.Tensor] | None,
        answer_mask: torch.Tensor | None = None,
        choice_mask: torch.Tensor | None = None,
        **model_inputs,
    ) -> torch.Tensor:
        """(batch, C) summed answer log-probabilities; the real choices go through as one batch."""
        if model_inputs:
            raise ValueError(
                f"unexpected multiple-choice inputs {sorted(model_inputs)}; expected input_ids, "
                "attention_mask, answer_mask and optionally choice_mask"
            )
        valid = check_choice_inputs(input_ids, attention_mask, answer_mask, choice_mask)
        ids = input_ids[valid]
        mask = None if attention_mask is None else attention_mask[valid]
        token_logits = self._backbone(ids, mask, deltas)
        flat = answer_log_likelihood(token_logits, ids, answer_mask[valid])
        scores = torch.full(valid.shape, -math.inf, dtype=flat.dtype, device=flat.device)
        return scores.masked_scatter(valid, flat)

    def _check_labels(
        self, labels: torch.Tensor | None, input_ids: torch.Tensor | None, model_inputs: dict
    ) -> None:
        if labels is None:
            return
        if self.likelihood == "next_token":
            check_token_labels(labels, input_ids)
            return
        batch = batch_size(input_ids, model_inputs)
        if labels.shape != (batch,):
            raise ValueError(
                f"labels must have shape ({batch},) to match the batch, got {tuple(labels.shape)}"
            )
        if self.likelihood == "multiple_choice":
            self._check_choice_labels(labels, input_ids, model_inputs.get("choice_mask"))
            return
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_labels):
            bad = labels[(labels < 0) | (labels >= self.num_labels)].unique().tolist()
            raise ValueError(
                f"labels {bad} are outside the model's label set 0..{self.num_labels - 1}"
            )

    @staticmethod
    def _check_choice_labels(
        labels: torch.Tensor, input_ids: torch.Tensor | None, choice_mask: torch.Tensor | None
    ) -> None:
        if input_ids is None or input_ids.dim() != 3:
            return  # check_choice_inputs names the problem
        choices = input_ids.shape[1]
        outside = ((labels < 0) | (labels >= choices)).nonzero().flatten().tolist()
        if outside:
            raise ValueError(
                f"labels {labels[outside].tolist()} of examples {outside} are not choice indices "
                f"0..{choices - 1}: the batch has {choices} choices per example"
            )
        if choice_mask is not None:
            picked = choice_mask.bool().gather(1, labels[:, None]).squeeze(1)
            missing = (~picked).nonzero().flatten().tolist()
            if missing:
                raise ValueError(
                    f"examples {missing}: the label points to a padded choice (choice_mask == 0)"
                )

    def _observe(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        valid: torch.Tensor | None = None,
    ) -> None:
        if self.likelihood == "next_token":
            self._observe_tokens(logits, labels)
            return
        finite = torch.isfinite(logits if valid is None else logits[valid.bool()])
        if not finite.all():
            raise FloatingPointError("the backbone returned non-finite logits")
        batch = logits.shape[0]
        index = torch.arange(batch, device=logits.device)
        with pyro.plate(DATA_PLATE, max(self.num_data, batch), subsample=index):
            pyro.sample(OBSERVED_SITE, dist.Categorical(logits=logits), obs=labels)

    def _observe_tokens(self, token_logits: torch.Tensor, labels: torch.Tensor | None) -> None:
        """One example is one sequence: its response tokens, a masked event of length L - 1."""
        if not torch.isfinite(token_logits).all():
            raise FloatingPointError("the backbone returned non-finite logits")
        batch = token_logits.shape[0]
        if labels is None:
            tokens = dist.Categorical(logits=token_logits[:, :-1])
            targets = None
        else:
            logits, targets, mask = shifted_targets(token_logits, labels)
            tokens = dist.Categorical(logits=logits).mask(mask)
        index = torch.arange(batch, device=token_logits.device)
        with pyro.plate(DATA_PLATE, max(self.num_data, batch), subsample=index):
            pyro.sample(OBSERVED_SITE, tokens.to_event(1), obs=targets)

    def _prior(self, path: str, layer: MonteCLoRALinear) -> dict:
        """The fixed prior distributions of a layer, cached per device and dtype."""
        weight = layer.lora_A
        key = (path, weight.device, weight.dtype)
        if key not in self._priors:
            self._priors[key] = prior_distributions(
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


def batch_size(input_ids: torch.Tensor | None, model_inputs: dict) -> int:
    """Number of examples in a batch given as ``input_ids`` or ``inputs_embeds``."""
    if input_ids is not None:
        return input_ids.shape[0]
    if model_inputs.get("inputs_embeds") is not None:
        return model_inputs["inputs_embeds"].shape[0]
    raise ValueError("pass input_ids or inputs_embeds")


def prior_distributions(
    config: MonteCLoRAConfig, in_features: int, device: torch.device, dtype: torch.dtype
) -> dict:
    """Priors of one layer that do not depend on other latent sites.

    ``concentration`` is a tensor (α0) rather than a distribution when the concentration is
    fixed; ``noise`` is absent under the hierarchical noise prior, which depends on Σ.
    """
    r, k = config.r, config.num_components
    opts = {"device": device, "dtype": dtype}
    df = torch.tensor(config.prior_df, **opts)
    if config.covariance == "full":
        scale_tril = math.sqrt(config.wishart_scale) * torch.eye(r, **opts)
        covariance = Wishart(df=df, scale_tril=scale_tril)
    else:
        rate = torch.full((r,), 0.5 / config.wishart_scale, **opts)
        covariance = dist.Gamma(df / 2 * torch.ones(r, **opts), rate).to_event(1)
    if config.concentration_prior == "gamma":
        concentration = dist.Gamma(
            torch.full((k,), config.concentration_shape, **opts),
            torch.full((k,), config.concentration_rate, **opts),
        ).to_event(1)
    else:
        concentration = torch.full((k,), config.concentration, **opts)
    priors = {"covariance": covariance, "concentration": concentration}
    if config.noise_prior == "standard":
        identity = (
            torch.ones(r, **opts) if config.covariance == "diagonal" else torch.eye(r, **opts)
        )
        priors["noise"] = noise_distribution(identity, config, in_features, jitter=0.0)
    return priors


def noise_distribution(
    covariance: torch.Tensor,
    config: MonteCLoRAConfig,
    in_features: int,
    jitter: float | None = None,
) -> dist.Distribution:
    """K·d_in independent r-vectors ~ N(0, Σ): event shape (K, d_in, r).

    ``covariance`` is the (r, r) matrix Σ, or its diagonal (r,) when ``covariance="diagonal"``.
    """
    jitter = config.jitter if jitter is None else jitter
    k, r = config.num_components, config.r
    if config.covariance == "diagonal":
        scale = (covariance + jitter).sqrt()
        return dist.Normal(torch.zeros_like(scale), scale).expand((k, in_features, r)).to_event(3)
    eye = torch.eye(r, dtype=covariance.dtype, device=covariance.device)
    scale_tril = torch.linalg.cholesky(covariance + jitter * eye)
    return IIDMultivariateNormal(scale_tril, (k, in_features))


def perturbation(
    weights: torch.Tensor, noise: torch.Tensor, config: MonteCLoRAConfig
) -> torch.Tensor:
    """δ = ε Σ_k π_k Z_kᵀ, of shape (r, d_in); only the heaviest component when sparse."""
    if config.mixture == "sparse":
        k = weights.argmax(-1)
        mixed = weights[k] * noise[k]
    else:
        mixed = torch.einsum("k,kdr->dr", weights, noise)
    return config.sample_scaler * mixed.t()
