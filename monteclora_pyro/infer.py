"""The MonteCLoRA objective split into its terms (docs/design.md §4), and seeded latent draws."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import kl_divergence

from monteclora_pyro.sites import OBSERVED_SITE, split_site_name


def elbo_terms(
    model: Callable, guide: Callable, *args, **kwargs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One-particle negative ELBO and its terms, with closed-form KLs where registered.

    The same estimator as :class:`pyro.infer.TraceMeanField_ELBO`: the observed and factor
    sites enter through their scaled log densities, each latent site through
    KL(guide ‖ model) given its parents, or log q - log p where no closed form exists.

    Returns
    -------
    loss : torch.Tensor
        The differentiable negative ELBO (the sum of the terms).
    terms : dict
        ``nll``, ``kl_covariance``, ``kl_concentration``, ``kl_weights``, ``kl_noise`` (summed
        over layers) and ``cooperative``, each already scaled as in the loss.
    """
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    terms = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            log_p = site["fn"].log_prob(site["value"])
            value = -scale_and_mask(log_p, site["scale"], site["mask"]).sum()
            key = "nll" if name == OBSERVED_SITE else name
        else:
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                kl = guide_site["fn"].log_prob(guide_site["value"]) - site["fn"].log_prob(
                    site["value"]
                )
            value = scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
            key = "kl_" + split_site_name(name)[1]
        terms[key] = terms.get(key, 0.0) + value
    loss = sum(terms.values())
    if not torch.isfinite(loss):
        bad = sorted(k for k, v in terms.items() if not torch.isfinite(v))
        raise FloatingPointError(f"the ELBO is not finite: non-finite terms {bad}")
    return loss, terms


def draw_guide(guide: nn.Module, num_samples: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``num_samples`` draws of every latent site from the guide, from their own seeded stream.

    The same ``(num_samples, seed)`` always gives the same draws, whatever the global RNG state.
    """
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(guide)):
        torch.manual_seed(seed)
        return [guide() for _ in range(num_samples)]


def _cuda_devices(module: nn.Module) -> list[int]:
    """CUDA devices holding ``module``'s parameters or buffers, whose streams a draw uses."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return sorted({t.device.index for t in tensors if t.is_cuda})


def draw_prior(model: nn.Module, num_samples: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``num_samples`` draws of every latent site from the model's priors."""
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(model)):
        torch.manual_seed(seed)
        draws = []
        for _ in range(num_samples):
            trace = poutine.trace(model.sample_latents).get_trace()
            draws.append(
                {
                    name: site["value"]
                    for name, site in trace.nodes.items()
                    if site["type"] == "sample"
                }
            )
        return draws


def posterior_deltas(
    model: nn.Module, guide: nn.Module, num_samples: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """The perturbations δ of A of S seeded guide draws; none for a pinned guide (LoRA)."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} is invalid: it must be >= 1")
    if not guide.stochastic:
        return []
    return [model.perturbations(d) for d in draw_guide(guide, num_samples, seed)]
