"""Distributions: the Bartlett Wishart, the Wishart KL, the pinned point mass, torch's KLs."""

from __future__ import annotations

import math
import warnings

import pyro.distributions as dist
import pytest
import torch
from conftest import tiny_hf_model
from pyro import poutine
from torch.distributions import kl_divergence
from torch.distributions.kl import _dispatch_kl

from monteclora_pyro import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from monteclora_pyro.guides.lora import PinnedDelta
from monteclora_pyro.models import IIDMultivariateNormal, Wishart, kl_wishart_wishart
from monteclora_pyro.models.distributions import jittered_cholesky
from monteclora_pyro.models.objectives import noise_distribution

DOUBLE = torch.float64


def _random_tril(d: int, generator: torch.Generator, batch: tuple[int, ...] = ()) -> torch.Tensor:
    """A well-conditioned random lower-triangular matrix with positive diagonal."""
    raw = torch.randn(*batch, d, d, generator=generator, dtype=DOUBLE)
    diag = 0.5 + torch.rand(*batch, d, generator=generator, dtype=DOUBLE)
    return 0.4 * raw.tril(-1) + torch.diag_embed(diag)


def _wishart(df, scale_tril) -> Wishart:
    return Wishart(df=torch.as_tensor(df, dtype=DOUBLE), scale_tril=scale_tril)


def _assert_within(estimate, expected, se, k=5.0):
    """Every entry of ``estimate`` lies within ``k`` standard errors of ``expected``."""
    gap = (estimate - expected).abs()
    assert (gap <= k * se).all(), (estimate, expected, se)


def _mc_kl(q, p, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo KL(q ‖ p) = E_q[log q - log p] and its standard error (batch-wise)."""
    with torch.no_grad():
        x = q.sample((draws,))
        ratio = q.log_prob(x) - p.log_prob(x)
    return ratio.mean(0), ratio.std(0) / math.sqrt(draws)


# --------------------------------------------------------------------------------------------
# Wishart with a Bartlett rsample
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 4, 8])
def test_wishart_rsample_does_not_warn_and_is_symmetric_positive_definite(d):
    torch.manual_seed(0)
    tril = _random_tril(d, torch.Generator().manual_seed(d))
    # df = d is the edge of the support (the prior's default ν0 = r), where torch's own sampler
    # warns about singular samples.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = _wishart(float(d), tril)
        x = w.rsample((4000,))
    assert x.shape == (4000, d, d)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, x.mT, rtol=0, atol=0)
    assert (torch.linalg.cholesky_ex(x).info == 0).all()
    assert (torch.linalg.eigvalsh(x) > 0).all()
    assert w.support.check(x).all()


def test_guide_covariance_draws_pass_the_model_support_check_in_float32():
    model = MonteCLoRAModel(
        tiny_hf_model(hidden=8),
        MonteCLoRAConfig(r=4, target_modules=["bert.encoder.layer.0.attention.self.query"]),
        num_data=10,
    )
    guide = MonteCLoRAGuide(model)
    (path,) = model.adapters
    name = f"{path}.covariance"
    prior = poutine.trace(model.sample_latents).get_trace().nodes[name]["fn"]
    torch.manual_seed(0)
    with torch.no_grad():
        draws = guide.site_distribution(name).rsample((20000,))
    assert draws.dtype == torch.float32
    outside = ~prior.support.check(draws)
    assert not outside.any(), f"{int(outside.sum())} of 20000 draws are not positive definite"


def _indefinite_by_rounding(d: int = 8, deficit_eps: float = 100.0) -> tuple[torch.Tensor, float]:
    """A float32 covariance of rank d - 1 (the draw at df ≈ d - 1 that stopped a CoLA run of the
    default, diagonal 4-260) shifted down by ``deficit_eps`` float32 eps of its mean diagonal:
    its smallest eigenvalue, -δ, is far below what rounding or a jitter of 1e-6 reach."""
    g = torch.Generator().manual_seed(3)
    x = (
        torch.randn(d, d - 1, generator=g, dtype=DOUBLE)
        * torch.linspace(1, 8, d, dtype=DOUBLE)[:, None]
    )
    matrix = x @ x.mT
    delta = deficit_eps * torch.finfo(torch.float32).eps * matrix.diagonal().mean().item()
    return (matrix - delta * torch.eye(d, dtype=DOUBLE)).float(), delta


def test_jittered_cholesky_repairs_a_covariance_rounding_left_indefinite():
    matrix, delta = _indefinite_by_rounding()
    eye = torch.eye(8)
    assert torch.linalg.cholesky_ex(matrix + 1e-6 * eye).info != 0  # what stopped the run
    factor = jittered_cholesky(matrix, 1e-6)
    assert torch.isfinite(factor).all()
    torch.testing.assert_close(factor, factor.tril(), rtol=0, atol=0)
    assert (factor.diagonal() > 0).all()
    # The repair adds c·I with c the first of eps·mean(diag)·10^k above δ (plus rounding), so
    # δ < c ≤ 10·δ·(1 + slack); 20·δ bounds it.
    added = (
        factor.double() @ factor.double().mT - matrix.double() - 1e-6 * eye.double()
    ).diagonal()
    assert (added > 0.5 * delta).all() and (added < 20 * delta).all(), (added, delta)


def test_jittered_cholesky_leaves_a_well_conditioned_covariance_alone():
    tril = _random_tril(6, torch.Generator().manual_seed(1))
    matrix = (tril @ tril.mT).float()
    expected = torch.linalg.cholesky(matrix + 1e-6 * torch.eye(6))
    torch.testing.assert_close(jittered_cholesky(matrix, 1e-6), expected, rtol=0, atol=0)


def test_jittered_cholesky_rejects_a_matrix_no_repair_can_make_a_covariance():
    with pytest.raises(ValueError, match="not positive definite even after 8 repairs"):
        jittered_cholesky(torch.full((4, 4), float("nan")), 1e-6)
    with pytest.raises(ValueError, match="not positive definite"):
        jittered_cholesky(-torch.eye(4), 1e-6)


def test_guide_and_noise_factorise_a_covariance_rounding_left_indefinite():
    """q(A | Σ, π) and the paper's noise take the Wishart draw Σ as it comes (not re-drawn)."""
    model = MonteCLoRAModel(
        tiny_hf_model(hidden=16),
        MonteCLoRAConfig.uncertainty(
            r=8, target_modules=["bert.encoder.layer.0.attention.self.query"]
        ),
        num_data=10,
    )
    guide = MonteCLoRAGuide(model)
    (path,) = model.adapters
    matrix, _ = _indefinite_by_rounding()
    weights = torch.full((model.config.num_components,), 1 / model.config.num_components)
    q_a = guide.adapter_distribution(path, matrix, weights)
    assert torch.isfinite(q_a.rsample()).all()
    noise = noise_distribution(matrix, MonteCLoRAConfig(r=8), in_features=16)
    assert torch.isfinite(noise.rsample()).all()


@pytest.mark.parametrize(("d", "df"), [(2, 2.0), (3, 5.5), (4, 4.0)])
def test_wishart_rsample_mean_is_df_times_scale(d, df):
    torch.manual_seed(1)
    tril = _random_tril(d, torch.Generator().manual_seed(10 + d))
    draws = 20000
    x = _wishart(df, tril).rsample((draws,))
    scale = tril @ tril.mT
    se = x.std(0) / math.sqrt(draws)
    _assert_within(x.mean(0), df * scale, se)
    # Second moments: Var(X_ij) = df (S_ij² + S_ii S_jj).
    diag = scale.diagonal()
    expected_var = df * (scale.pow(2) + diag[:, None] * diag[None, :])
    centred = (x - df * scale).pow(2)
    _assert_within(centred.mean(0), expected_var, centred.std(0) / math.sqrt(draws))


def test_wishart_rsample_has_unbiased_pathwise_gradients():
    torch.manual_seed(2)
    d, df, draws = 3, 3.0, 20000
    tril = _random_tril(d, torch.Generator().manual_seed(3))
    # One copy of L per draw, so that each draw's gradient lands in its own slice.
    leaf = tril.expand(draws, d, d).clone().requires_grad_(True)
    w = _wishart(df, leaf)
    assert w.has_rsample
    x = w.rsample()
    assert x.requires_grad
    x.diagonal(dim1=-2, dim2=-1).sum().backward()  # Σ_s tr(X_s)
    grad = leaf.grad
    assert grad is not None and torch.isfinite(grad).all()
    lower = torch.ones(d, d, dtype=torch.bool).tril()
    assert (grad.mean(0)[lower].abs() > 0).all()
    # X = L W Lᵀ with W ~ Wishart(df, I), so d tr(X)/dL = 2 L W, whose mean is 2 df L: the
    # pathwise gradient must be unbiased.
    se = grad.std(0) / math.sqrt(draws)
    _assert_within(grad.mean(0)[lower], (2 * df * tril)[lower], se[lower] + 1e-12)


# --------------------------------------------------------------------------------------------
# Closed-form Wishart KL
# --------------------------------------------------------------------------------------------


def _kl_cases():
    g = torch.Generator().manual_seed(42)
    eye2, eye4 = torch.eye(2, dtype=DOUBLE), torch.eye(4, dtype=DOUBLE)
    return {
        "d2-same-df": (3.0, _random_tril(2, g), 3.0, eye2),
        "d2-diff-df": (2.5, _random_tril(2, g), 6.0, 0.7 * eye2),
        "d4-edge-df": (4.0, _random_tril(4, g), 4.0, eye4),
        "d4-diff-df": (7.0, _random_tril(4, g), 4.5, _random_tril(4, g)),
        "d4-p-larger": (4.0, 0.6 * _random_tril(4, g), 9.0, 1.3 * eye4),
        "batch-of-two": (
            torch.tensor([3.0, 6.5]),
            _random_tril(3, g, (2,)),
            torch.tensor([5.0, 3.0]),
            _random_tril(3, g, (2,)),
        ),
    }


KL_CASES = _kl_cases()


@pytest.mark.parametrize("case", list(KL_CASES))
def test_wishart_kl_matches_monte_carlo(case):
    df_q, tril_q, df_p, tril_p = KL_CASES[case]
    q, p = _wishart(df_q, tril_q), _wishart(df_p, tril_p)
    kl = kl_wishart_wishart(q, p)
    assert kl.shape == q.batch_shape
    assert (kl >= 0).all()
    torch.manual_seed(3)
    estimate, se = _mc_kl(q, p, draws=20000)
    _assert_within(kl, estimate, se)
    torch.testing.assert_close(kl_divergence(q, p), kl, rtol=0, atol=0)


@pytest.mark.parametrize("case", list(KL_CASES))
def test_wishart_kl_of_a_distribution_to_itself_is_zero(case):
    df_q, tril_q, _, _ = KL_CASES[case]
    q = _wishart(df_q, tril_q)
    same = _wishart(df_q, tril_q.clone())
    kl = kl_divergence(q, same)
    assert kl.abs().max() <= 1e-5, kl


def test_wishart_kl_is_positive_off_the_diagonal_and_grows_with_the_gap():
    eye = torch.eye(3, dtype=DOUBLE)
    p = _wishart(3.0, eye)
    kls = torch.stack([kl_divergence(_wishart(3.0, c * eye), p) for c in (1.0, 1.2, 1.5, 2.0)])
    assert kls[0].abs() <= 1e-5
    assert (kls[1:] > 0).all() and (kls.diff() > 0).all(), kls


def test_kl_divergence_dispatches_to_the_registered_wishart_kl():
    for q_type in (Wishart, dist.Wishart, torch.distributions.Wishart):
        for p_type in (Wishart, dist.Wishart, torch.distributions.Wishart):
            assert _dispatch_kl(q_type, p_type) is kl_wishart_wishart, (q_type, p_type)


def test_wishart_kl_rejects_different_dimensions():
    q = _wishart(3.0, torch.eye(3, dtype=DOUBLE))
    p = _wishart(3.0, torch.eye(2, dtype=DOUBLE))
    with pytest.raises(ValueError, match="dimensions differ"):
        kl_divergence(q, p)


# --------------------------------------------------------------------------------------------
# PinnedDelta (the LoRA guide's point mass)
# --------------------------------------------------------------------------------------------


def _pinned_cases():
    g = torch.Generator().manual_seed(7)
    cfg = MonteCLoRAConfig(r=3, num_components=2)
    wishart = Wishart(df=torch.tensor(3.0), scale_tril=torch.eye(3))
    gamma = dist.Gamma(torch.full((4,), 2.0), torch.full((4,), 2.0)).to_event(1)
    dirichlet = dist.Dirichlet(torch.tensor([0.5, 1.0, 2.0]))
    noise = noise_distribution(torch.eye(3), cfg, in_features=5, jitter=0.0)
    return {
        "wishart": (wishart, wishart.mean, 2),
        "gamma": (gamma, torch.rand(4, generator=g) + 0.5, 1),
        "dirichlet": (dirichlet, torch.tensor([0.2, 0.3, 0.5]), 1),
        "noise": (noise, torch.randn(2, 5, 3, generator=g), 3),
    }


PINNED = _pinned_cases()


@pytest.mark.parametrize("case", list(PINNED))
def test_pinned_delta_with_the_model_density_has_zero_kl(case):
    q, value, event_dim = PINNED[case]
    log_q = q.log_prob(value)
    assert log_q.shape == () and log_q != 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # also: no ambiguous-dispatch warning
        point = PinnedDelta(value, log_density=log_q, event_dim=event_dim)
        kl = kl_divergence(point, q)
    assert kl.shape == ()
    assert kl == 0


@pytest.mark.parametrize("case", list(PINNED))
def test_pinned_delta_kl_is_log_density_minus_log_q(case):
    q, value, event_dim = PINNED[case]
    log_density = torch.tensor(0.75)
    point = PinnedDelta(value, log_density=log_density, event_dim=event_dim)
    kl = kl_divergence(point, q)
    torch.testing.assert_close(kl, log_density - q.log_prob(value))
    # Pyro's plain Delta drops log_density: the pinned one must not.
    plain = kl_divergence(dist.Delta(value, log_density=log_density, event_dim=event_dim), q)
    torch.testing.assert_close(kl - plain, log_density)


# --------------------------------------------------------------------------------------------
# torch's closed forms for the other guide/prior pairs of the ELBO
# --------------------------------------------------------------------------------------------


def test_gamma_independent_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(11)
    k = 4
    # Concentration site: guide Gamma(shape, rate) vs prior Gamma(2, 2); and the diagonal
    # covariance: Gamma(ν/2, 1/(2v)) vs Gamma(ν/2, 1/2).
    pairs = [
        (
            0.5 + 3 * torch.rand(k, generator=g, dtype=DOUBLE),
            0.5 + torch.rand(k, generator=g, dtype=DOUBLE),
        ),
        (
            torch.full((k,), 2.0, dtype=DOUBLE),
            0.5 / (0.3 + torch.rand(k, generator=g, dtype=DOUBLE)),
        ),
    ]
    priors = [(2.0, 2.0), (2.0, 0.5)]
    torch.manual_seed(4)
    for (shape, rate), (a0, b0) in zip(pairs, priors, strict=True):
        q = dist.Gamma(shape, rate).to_event(1)
        p = dist.Gamma(torch.full((k,), a0, dtype=DOUBLE), torch.full((k,), b0, dtype=DOUBLE))
        p = p.to_event(1)
        kl = kl_divergence(q, p)
        assert kl.shape == () and kl > 0
        estimate, se = _mc_kl(q, p, draws=20000)
        _assert_within(kl, estimate, se)
        assert kl_divergence(q, q).abs() <= 1e-6


def test_dirichlet_kl_matches_monte_carlo():
    torch.manual_seed(5)
    cases = [
        (torch.tensor([0.3, 1.2, 2.5, 0.8]), torch.ones(4)),
        (torch.tensor([5.0, 5.0, 0.5, 1.0]), torch.tensor([0.7, 1.3, 2.0, 1.0])),
    ]
    for kappa, alpha in cases:
        q, p = dist.Dirichlet(kappa.to(DOUBLE)), dist.Dirichlet(alpha.to(DOUBLE))
        kl = kl_divergence(q, p)
        assert kl > 0
        estimate, se = _mc_kl(q, p, draws=20000)
        _assert_within(kl, estimate, se)
        assert kl_divergence(q, q).abs() <= 1e-6


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_noise_kl_matches_monte_carlo(covariance):
    cfg = MonteCLoRAConfig(r=3, num_components=2, covariance=covariance)
    in_features = 5
    g = torch.Generator().manual_seed(6)
    tril = _random_tril(3, g)
    cov = tril @ tril.mT if covariance == "full" else tril.diagonal().pow(2)
    identity = torch.eye(3, dtype=DOUBLE) if covariance == "full" else torch.ones(3, dtype=DOUBLE)
    q = noise_distribution(cov, cfg, in_features)  # the guide: rows ~ N(0, Σ)
    p = noise_distribution(identity, cfg, in_features, jitter=0.0)  # the standard prior
    assert q.event_shape == p.event_shape == (2, in_features, 3)
    kl = kl_divergence(q, p)  # must not raise NotImplementedError: the ELBO needs a closed form
    assert kl.shape == () and kl > 0
    torch.manual_seed(7)
    estimate, se = _mc_kl(q, p, draws=20000)
    _assert_within(kl, estimate, se)
    # Closed form per row, times K·d_in rows.
    sigma = cov + cfg.jitter * (torch.eye(3, dtype=DOUBLE) if covariance == "full" else 1.0)
    if covariance == "diagonal":
        sigma = torch.diag(sigma)
    per_row = 0.5 * (torch.trace(sigma) - 3 - torch.logdet(sigma))
    torch.testing.assert_close(kl, 2 * in_features * per_row)


# --------------------------------------------------------------------------------------------
# IIDMultivariateNormal (the noise rows under a full covariance)
# --------------------------------------------------------------------------------------------


def _expanded_mvn(tril: torch.Tensor, rows: tuple[int, ...]) -> dist.Distribution:
    loc = torch.zeros(tril.shape[-1], dtype=tril.dtype)
    return dist.MultivariateNormal(loc, scale_tril=tril).expand(rows).to_event(len(rows))


def test_iid_mvn_equals_the_expanded_multivariate_normal():
    g = torch.Generator().manual_seed(11)
    tril_q, tril_p = _random_tril(3, g), _random_tril(3, g)
    rows = (2, 5)
    q, p = IIDMultivariateNormal(tril_q, rows), IIDMultivariateNormal(tril_p, rows)
    q_ref, p_ref = _expanded_mvn(tril_q, rows), _expanded_mvn(tril_p, rows)
    assert q.event_shape == q_ref.event_shape == (2, 5, 3) and q.batch_shape == ()
    value = torch.randn(4, 2, 5, 3, generator=g, dtype=DOUBLE)
    torch.testing.assert_close(q.log_prob(value), q_ref.log_prob(value))
    torch.testing.assert_close(q.entropy(), q_ref.entropy())
    torch.testing.assert_close(kl_divergence(q, p), kl_divergence(q_ref, p_ref))
    torch.manual_seed(3)
    draw = q.rsample((4,))
    torch.manual_seed(3)
    torch.testing.assert_close(draw, q_ref.rsample((4,)))


def test_iid_mvn_rows_have_covariance_l_lt():
    g = torch.Generator().manual_seed(12)
    tril = _random_tril(3, g)
    rows = 4000
    torch.manual_seed(13)
    x = IIDMultivariateNormal(tril, (rows,)).rsample()
    cov = x.mT @ x / rows
    sigma = tril @ tril.mT
    # Var of a sample covariance entry: (Σ_ij² + Σ_ii Σ_jj) / n.
    se = ((sigma.pow(2) + sigma.diagonal()[:, None] * sigma.diagonal()[None, :]) / rows).sqrt()
    _assert_within(cov, sigma, se)
    assert (x.mean(0).abs() <= 5 * (sigma.diagonal() / rows).sqrt()).all()


def test_iid_mvn_rejects_a_non_square_factor():
    with pytest.raises(ValueError, match="square"):
        IIDMultivariateNormal(torch.ones(2, 3), (4,))
