"""Guides: site parity with the model, the sampler's moments, gradient flow, LoRA guide."""

from __future__ import annotations

import itertools
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import tiny_hf_model, token_batch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from monteclora_pyro import (
    LoRAGuide,
    MonteCLoRAConfig,
    MonteCLoRAGuide,
    MonteCLoRAModel,
    elbo_terms,
)
from monteclora_pyro.models import IIDMultivariateNormal, Wishart
from monteclora_pyro.models.objectives import perturbation

LABELS = torch.tensor([0, 1, 1, 0])
VARIANTS = list(
    itertools.product(
        ["full", "diagonal"], ["gamma", "fixed"], ["standard", "hierarchical"], ["dense", "sparse"]
    )
)


def _latent(trace):
    return {
        n: s
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and n != "data"
    }


def _expected_type(name, cfg):
    site = name.rsplit(".", 1)[-1]
    if site == "covariance":
        return (Wishart, Wishart) if cfg.covariance == "full" else (dist.Gamma, dist.Gamma)
    if site == "concentration":
        return dist.Gamma, dist.Gamma
    if site == "weights":
        return dist.Dirichlet, dist.Dirichlet
    base = IIDMultivariateNormal if cfg.covariance == "full" else dist.Normal
    return base, base


def _base(fn):
    while isinstance(fn, dist.Independent | torch.distributions.Independent):
        fn = fn.base_dist
    return fn


@pytest.mark.parametrize("arch", ["bert", "roberta", "llama"])
@pytest.mark.parametrize(("covariance", "concentration", "noise", "mixture"), VARIANTS)
def test_guide_covers_every_model_site(arch, covariance, concentration, noise, mixture):
    cfg = MonteCLoRAConfig(
        r=3,
        num_components=2,
        covariance=covariance,
        concentration_prior=concentration,
        noise_prior=noise,
        mixture=mixture,
    )
    model = MonteCLoRAModel(tiny_hf_model(arch), cfg, num_data=20)
    guide = MonteCLoRAGuide(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guide_trace = poutine.trace(guide).get_trace(token_batch(), labels=LABELS)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            token_batch(), labels=LABELS
        )
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
    model_sites, guide_sites = _latent(model_trace), _latent(guide_trace)
    assert list(model_sites) == list(guide_sites)
    per_layer = 4 if concentration == "gamma" else 3
    assert len(model_sites) == per_layer * len(model.adapters)
    for name, site in model_sites.items():
        g = guide_sites[name]
        assert g["fn"].support == site["fn"].support or str(g["fn"].support) == str(
            site["fn"].support
        ), name
        assert g["fn"].event_shape == site["fn"].event_shape, name
        assert g["value"].shape == site["value"].shape, name
        assert torch.isfinite(site["log_prob_sum"]) and torch.isfinite(g["log_prob_sum"])
        assert g["fn"].has_rsample, name
        model_type, guide_type = _expected_type(name, cfg)
        assert isinstance(_base(site["fn"]), model_type), name
        assert isinstance(_base(g["fn"]), guide_type), name


def _one_layer_model(**overrides):
    cfg = MonteCLoRAConfig(
        r=3,
        num_components=3,
        sample_scaler=1.0,
        target_modules=["bert.encoder.layer.0.attention.self.query"],
        **overrides,
    )
    return MonteCLoRAModel(tiny_hf_model(hidden=8), cfg, num_data=10)


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_sampler_is_unbiased_with_the_design_variance(covariance):
    torch.manual_seed(0)
    model = _one_layer_model(covariance=covariance)
    guide = MonteCLoRAGuide(model)
    (path,) = model.adapters
    with torch.no_grad():
        for param in guide.unconstrained.values():
            param.add_(0.3 * torch.randn_like(param))
    cfg = model.config
    draws = 2500
    deltas = []
    with torch.no_grad():
        for _ in range(draws):
            s = guide()
            deltas.append(perturbation(s[f"{path}.weights"], s[f"{path}.noise"], cfg))
    delta = torch.stack(deltas).double()  # (S, r, d_in): A - μ for each draw
    # Mean: every entry of A - μ is zero in expectation. Average the d_in columns within a draw
    # (draws are independent, columns within a draw are not) and compare to 5 standard errors.
    per_draw = delta.mean(-1)
    se = per_draw.std(0) / math.sqrt(draws)
    assert (per_draw.mean(0).abs() <= 5 * se).all(), (per_draw.mean(0), se)
    # Covariance of a column: ε² E‖π‖² E[Σ].
    kappa = guide.constrained(f"{path}.weights.concentration").double()
    k0 = kappa.sum()
    e_sq_norm = ((kappa * (k0 - kappa)) / (k0**2 * (k0 + 1)) + (kappa / k0) ** 2).sum()
    df = cfg.prior_df
    if covariance == "full":
        tril = guide.constrained(f"{path}.covariance.scale_tril").double()
        e_sigma = df * tril @ tril.T
    else:
        e_sigma = torch.diag(df * guide.constrained(f"{path}.covariance.scale").double())
    expected = cfg.sample_scaler**2 * e_sq_norm * e_sigma
    products = torch.einsum("sad,sbd->sab", delta, delta) / delta.shape[-1]
    empirical = products.mean(0)
    se = products.std(0) / math.sqrt(draws)
    assert ((empirical - expected).abs() <= 5 * se + 1e-12).all(), (empirical, expected, se)


@pytest.mark.parametrize("arch", ["bert", "roberta", "llama"])
@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_gradients_reach_adapter_head_and_variational_parameters_only(arch, covariance):
    cfg = MonteCLoRAConfig(r=4, covariance=covariance, sample_scaler=0.1)
    model = MonteCLoRAModel(tiny_hf_model(arch), cfg, num_data=20)
    for layer in model.adapters.values():
        torch.nn.init.normal_(layer.lora_B)  # at B = 0 no gradient reaches μ or the guide
    guide = MonteCLoRAGuide(model)
    loss, _ = elbo_terms(model, guide, token_batch(), labels=LABELS)
    loss.backward()
    named = [*model.trainable_parameters(), *guide.named_variational_parameters()]
    for name, param in named:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    trainable = {id(p) for _, p in named}
    for name, param in model.hf_model.named_parameters():
        if id(param) not in trainable:
            assert param.grad is None and not param.requires_grad, name


def test_elbo_terms_equal_pyros_mean_field_elbo():
    model = MonteCLoRAModel(tiny_hf_model(), MonteCLoRAConfig(r=4), num_data=30)
    guide = MonteCLoRAGuide(model)
    pyro.set_rng_seed(5)
    loss, terms = elbo_terms(model, guide, token_batch(), labels=LABELS)
    pyro.set_rng_seed(5)
    reference = TraceMeanField_ELBO().differentiable_loss(
        model, guide, token_batch(), labels=LABELS
    )
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss, sum(terms.values()))
    assert set(terms) == {
        "nll",
        "kl_covariance",
        "kl_concentration",
        "kl_weights",
        "kl_noise",
        "cooperative",
    }


def test_plain_elbo_scale_and_monte_carlo_elbo_agree_in_mean():
    model = MonteCLoRAModel(
        tiny_hf_model(hidden=8), MonteCLoRAConfig(r=2, kl_loss_weight=None), num_data=30
    )
    guide = MonteCLoRAGuide(model)
    trace = poutine.trace(guide).get_trace(token_batch())
    assert all(s["scale"] == 1.0 for s in _latent(trace).values())
    with torch.no_grad():
        analytic = torch.stack(
            [elbo_terms(model, guide, token_batch(), labels=LABELS)[0] for _ in range(150)]
        )
        sampled = torch.stack(
            [
                Trace_ELBO().differentiable_loss(model, guide, token_batch(), labels=LABELS)
                for _ in range(150)
            ]
        )
    se = math.sqrt(analytic.var() / 150 + sampled.var() / 150)
    assert abs(analytic.mean() - sampled.mean()) <= 5 * se


def test_lora_guide_is_plain_lora():
    model = MonteCLoRAModel(tiny_hf_model(), MonteCLoRAConfig(r=4), num_data=40)
    for layer in model.adapters.values():
        torch.nn.init.normal_(layer.lora_B)
    guide = LoRAGuide(model)
    assert list(guide.parameters()) == []
    ids = token_batch()
    loss, terms = elbo_terms(model, guide, ids, labels=LABELS)
    nll = torch.nn.functional.cross_entropy(model.logits(ids), LABELS, reduction="sum")
    torch.testing.assert_close(terms["nll"], nll * 40 / 4)
    for key, value in terms.items():
        if key != "nll":
            assert value == 0, key
    torch.testing.assert_close(loss, terms["nll"])
    reference = TraceMeanField_ELBO().differentiable_loss(model, guide, ids, labels=LABELS)
    torch.testing.assert_close(reference, loss)
