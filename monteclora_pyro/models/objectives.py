"""Objectives: how the latent sites of each adapted layer are laid out and weighted.

- ``"paper"`` (:class:`PaperObjective`): the paper's objective (docs/design.md §2 and §4). A is
  μ plus ε times a Dirichlet-weighted mixture of K Gaussian draws; the latent sites are weighted
  by η·N/L (``kl_loss_weight``) and a cooperative factor penalises uneven weights.
- ``"bayes"`` (:class:`BayesObjective`): the MonteCLoRA sampler as the variational family of a
  posterior over A (docs/design.md §9). Every column of A is under N(0, Λ⁻¹) with a Wishart
  hyperprior on the precision Λ; Σ, π and α are auxiliary variables of the guide
  q(a_j | Σ, π) = N(μ_j, σ²‖π‖²Σ), so the objective stays a lower bound on log p(y); the KL
  is weighted by the temperature ``kl_loss_weight`` (None: 1, the ELBO).

A new objective is one subclass of :class:`Objective` added to :data:`OBJECTIVES`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import pyro
import pyro.distributions as dist
import torch

from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.models.distributions import (
    IIDMultivariateNormal,
    PrecisionRows,
    Wishart,
    jittered_cholesky,
)
from monteclora_pyro.sites import site_name

if TYPE_CHECKING:
    from monteclora_pyro.models.model import MonteCLoRAModel

Latents = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


class Objective:
    """The latent sites of a layer, their priors, their scale, and A's perturbation."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]  # latent site kinds per layer, in sampling order
    learnable_df: ClassVar[bool] = False  # whether the guide learns its Wishart df
    pinnable: ClassVar[bool] = True  # whether LoRAGuide's point masses give plain LoRA

    def latent_scale(self, model: MonteCLoRAModel) -> float:
        """The scale of the latent sites in the model and the guide."""
        raise NotImplementedError

    def priors(self, config: MonteCLoRAConfig, in_features: int, device, dtype) -> dict:
        """The priors of one layer that do not depend on other latent sites."""
        return prior_distributions(config, in_features, device, dtype)

    def sample_latents(self, model: MonteCLoRAModel) -> Latents:
        """Sample every latent site (unscaled): δ of A and π, keyed by layer path."""
        raise NotImplementedError

    def perturbations(
        self, model: MonteCLoRAModel, samples: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """δ = A - μ per layer from latent-site values (e.g. what a guide returns)."""
        raise NotImplementedError


def _mixture_sites(model: MonteCLoRAModel, path: str, prior: dict) -> tuple:
    """Sample Σ, α (unless fixed) and π of a layer: the MonteCLoRA mixture's structure."""
    cov = pyro.sample(site_name(path, "covariance"), prior["covariance"])
    if model.config.concentration_prior == "gamma":
        alpha = pyro.sample(site_name(path, "concentration"), prior["concentration"])
    else:
        alpha = prior["concentration"]
    pi = pyro.sample(site_name(path, "weights"), dist.Dirichlet(alpha))
    return cov, pi


class PaperObjective(Objective):
    """The paper's objective: A = μ + ε Σ_k π_k Z_kᵀ, sites weighted by η·N/L."""

    name = "paper"
    kinds = ("covariance", "concentration", "weights", "noise")

    def latent_scale(self, model: MonteCLoRAModel) -> float:
        eta = model.config.kl_loss_weight
        return 1.0 if eta is None else eta * model.num_data / len(model.adapters)

    def sample_latents(self, model: MonteCLoRAModel) -> Latents:
        cfg = model.config
        deltas, weights = {}, {}
        for path, layer in model.adapters.items():
            prior = model.prior(path, layer)
            cov, pi = _mixture_sites(model, path, prior)
            if "noise" in prior:
                noise_dist = prior["noise"]
            else:
                noise_dist = noise_distribution(cov, cfg, layer.in_features)
            noise = pyro.sample(site_name(path, "noise"), noise_dist)
            deltas[path] = perturbation(pi, noise, cfg)
            weights[path] = pi
        return deltas, weights

    def perturbations(
        self, model: MonteCLoRAModel, samples: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {
            path: perturbation(
                samples[site_name(path, "weights")],
                samples[site_name(path, "noise")],
                model.config,
            )
            for path in model.adapters
        }


class BayesObjective(Objective):
    """A posterior over A: columns under N(0, Λ⁻¹), Λ ~ Wishart; Σ, π, α auxiliary."""

    name = "bayes"
    kinds = ("precision", "covariance", "concentration", "weights", "A")
    learnable_df = True
    pinnable = False  # A itself is latent: pinning it at its prior mean would zero the adapter

    def latent_scale(self, model: MonteCLoRAModel) -> float:
        temperature = model.config.kl_loss_weight
        return 1.0 if temperature is None else temperature

    def priors(self, config: MonteCLoRAConfig, in_features: int, device, dtype) -> dict:
        priors = prior_distributions(config, in_features, device, dtype)
        priors.pop("noise", None)
        r = config.r
        df = torch.tensor(config.precision_prior_df, device=device, dtype=dtype)
        scale = math.sqrt(config.precision_scale / config.precision_prior_df)
        priors["precision"] = Wishart(
            df=df, scale_tril=scale * torch.eye(r, device=device, dtype=dtype)
        )
        return priors

    def sample_latents(self, model: MonteCLoRAModel) -> Latents:
        deltas, weights = {}, {}
        for path, layer in model.adapters.items():
            prior = model.prior(path, layer)
            precision = pyro.sample(site_name(path, "precision"), prior["precision"])
            _, pi = _mixture_sites(model, path, prior)
            a = pyro.sample(site_name(path, "A"), PrecisionRows(precision, layer.in_features))
            deltas[path] = a.mT - layer.lora_A
            weights[path] = pi
        return deltas, weights

    def perturbations(
        self, model: MonteCLoRAModel, samples: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {
            path: samples[site_name(path, "A")].mT - layer.lora_A
            for path, layer in model.adapters.items()
        }


OBJECTIVES: dict[str, Objective] = {cls.name: cls() for cls in (PaperObjective, BayesObjective)}


def mixture_norm(weights: torch.Tensor, config: MonteCLoRAConfig) -> torch.Tensor:
    """‖π‖₂ (dense), or the largest weight (sparse): Σ_k π_k z_k ~ N(0, norm² Σ) given π."""
    return weights.max(-1).values if config.mixture == "sparse" else weights.norm(dim=-1)


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
        scale_tril = math.sqrt(config.prior_scale) * torch.eye(r, **opts)
        covariance = Wishart(df=df, scale_tril=scale_tril)
    else:
        rate = torch.full((r,), 0.5 / config.prior_scale, **opts)
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
    return IIDMultivariateNormal(jittered_cholesky(covariance, jitter), (k, in_features))


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
