"""objective="bayes" is a posterior: checks against closed forms on tiny linear models.

The models here are one frozen ``nn.Linear`` with zero weight, adapted at rank r with B frozen
at 1, so that f(x) = s·1ᵀA x with s = lora_alpha / r = 1, under a Gaussian likelihood of known
noise sd τ. For r = 1 this is Bayesian linear regression on the d_in-vector a = Aᵀ: with the
precision Λ = λ known, the exact posterior is N(P⁻¹Xᵀy/τ², P⁻¹), P = λI + XᵀX/τ².

What the guide can reach (docs/design.md §9.2). q(a_j | Σ, π) = N(μ_j, S), S = σ²‖π‖²Σ: one
random r×r covariance S shared by all d_in columns, and no correlation between columns given S.
In the linear-Gaussian model the ELBO is, in μ, the exact log posterior (so the trained μ is
the exact posterior mean), and the stationarity in the free scale σ gives
``E[S] = d_in / tr(P)`` for r = 1: the guide's variance is the inverse of the *mean diagonal* of
the posterior precision (the mean-field optimum 1/P_jj when the diagonal is constant), never the
exact marginal variance (P⁻¹)_jj ≥ 1/P_jj. Given q(A), the terms in Λ are conjugate: the best
Wishart q(Λ) is Wishart(ν0 + d_in, (V0⁻¹ + Σ_j E_q[a_j a_jᵀ])⁻¹).

Every tolerance below comes from spreads measured over seeds 0-3 (the figures are in the
comments); the trainings run with Pyro's argument validation off, for speed (the closed-form
and ELBO checks keep it on).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from monteclora_pyro import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from monteclora_pyro.infer import draw_guide, elbo_terms
from monteclora_pyro.models.distributions import (
    IIDMultivariateNormal,
    PrecisionRows,
    kl_rows_to_precision_rows,
)
from monteclora_pyro.models.likelihood import Likelihood
from monteclora_pyro.sites import DATA_PLATE, OBSERVED_SITE

DOUBLE = torch.float64
LAYER = "proj"
KNOWN_DF = 1e5  # ν0 so large that p(Λ) (and q(Λ)) sit at precision_scale: Λ is known
DECAY = 0.005
T4_DECAY = 0.05


class Regressor(nn.Module):
    """A "backbone" whose only module is one frozen linear map to a scalar, with zero weight."""

    def __init__(self, d_in: int):
        super().__init__()
        self.proj = nn.Linear(d_in, 1, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()

    def forward(self, input_ids=None, attention_mask=None):
        return self.proj(input_ids)


class GaussianLikelihood(Likelihood):
    """y_i ~ N(f(x_i), τ²) under the subsampled data plate (mirrors likelihood._observe)."""

    name = "gaussian"
    causal = False

    def __init__(self, tau: float):
        self.tau = tau

    def observe(self, scores, labels, inputs, num_data):
        batch = scores.shape[0]
        index = torch.arange(batch, device=scores.device)
        with pyro.plate(DATA_PLATE, max(num_data, batch), subsample=index):
            pyro.sample(OBSERVED_SITE, dist.Normal(scores.squeeze(-1), self.tau), obs=labels)


def build(d_in, *, num_data, tau, r=1, b=1.0, seed=0, **overrides):
    """(model, guide) on a :class:`Regressor` with B frozen at ``b`` (s = lora_alpha / r = 1).

    ``modules_to_save=None``: the Gaussian likelihood names no default head (``[]`` is refused
    by the config).
    """
    torch.manual_seed(seed)
    config = MonteCLoRAConfig.bayes(
        r=r, target_modules=[LAYER], modules_to_save=None, lora_alpha=float(r), **overrides
    )
    model = MonteCLoRAModel(
        Regressor(d_in), config, num_data=num_data, likelihood=GaussianLikelihood(tau)
    )
    lora_b = model.adapters[LAYER].lora_B
    with torch.no_grad():
        lora_b.fill_(b)
    lora_b.requires_grad_(False)
    return model, MonteCLoRAGuide(model)


def fit(model, guide, batch, steps, *, lr=0.1, decay=DECAY, seed=0, params=None, record=None):
    """Full-batch SVI on the negative ELBO with Adam, lr decaying exponentially to lr·decay."""
    pyro.set_rng_seed(seed)
    if params is None:
        params = [p for _, p in model.trainable_parameters() if p.requires_grad]
        params += [p for p in guide.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, decay ** (1 / steps))
    history = []
    with pyro.validation_enabled(False):
        for _ in range(steps):
            optimizer.zero_grad()
            loss, _ = elbo_terms(model, guide, **batch)
            loss.backward()
            optimizer.step()
            schedule.step()
            if record is not None:
                history.append(record())
    return history


def draws(guide, num, seed=1):
    with pyro.validation_enabled(False):
        return draw_guide(guide, num, seed)


def mu_columns(model) -> torch.Tensor:
    """μ as the (d_in, r) array of columns of A."""
    return model.adapters[LAYER].lora_A.detach().mT


def precision_mean(guide) -> torch.Tensor:
    """E_q[Λ] = df · L Lᵀ."""
    tril = guide.constrained(f"{LAYER}.precision.scale_tril")
    return (guide.constrained(f"{LAYER}.precision.df") * tril @ tril.mT).detach()


def guide_covariance(guide, samples) -> torch.Tensor:
    """E_q[S], S = σ²‖π‖²(Σ + jitter·I), from guide draws of Σ and π."""
    sigma = guide.constrained(f"{LAYER}.A.scale").detach()
    covariance = torch.stack([s[f"{LAYER}.covariance"] for s in samples])
    norm2 = torch.stack([s[f"{LAYER}.weights"].pow(2).sum() for s in samples])
    eye = torch.eye(covariance.shape[-1])
    return (sigma**2 * norm2[:, None, None] * (covariance + guide.config.jitter * eye)).mean(0)


def conjugate_precision(model, guide, expected_s) -> tuple[float, torch.Tensor]:
    """(df, mean) of Wishart(ν0 + d_in, (V0⁻¹ + Σ_j E_q[a_j a_jᵀ])⁻¹) for the given E_q[S]."""
    cfg = model.config
    mu = mu_columns(model)
    d_in, r = mu.shape
    nu0 = cfg.precision_prior_df
    second_moment = mu.mT @ mu + d_in * expected_s
    scale = torch.linalg.inv(nu0 / cfg.precision_scale * torch.eye(r) + second_moment)
    return nu0 + d_in, (nu0 + d_in) * scale


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error ‖a - b‖ / ‖b‖."""
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


# --------------------------------------------------------------------------------------------
# Closed forms (float64, validation on)
# --------------------------------------------------------------------------------------------


def _precision(r: int, generator: torch.Generator) -> torch.Tensor:
    raw = torch.randn(r, r, generator=generator, dtype=DOUBLE)
    return raw @ raw.mT + 0.5 * torch.eye(r, dtype=DOUBLE)


def test_precision_rows_log_prob_is_the_sum_of_multivariate_normal_rows():
    g = torch.Generator().manual_seed(0)
    precision = _precision(3, g)
    value = torch.randn(2, 5, 3, generator=g, dtype=DOUBLE)  # a batch of 2 values, 5 rows
    expected = MultivariateNormal(torch.zeros(3, dtype=DOUBLE), precision_matrix=precision)
    got = PrecisionRows(precision, 5).log_prob(value)
    assert got.shape == (2,)
    torch.testing.assert_close(got, expected.log_prob(value).sum(-1), rtol=1e-12, atol=1e-10)


def test_precision_rows_rsample_has_covariance_inverse_precision():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    precision = _precision(3, g)
    rows = PrecisionRows(precision, 50).rsample((400,)).reshape(-1, 3)  # n = 20,000 rows
    n = rows.shape[0]
    expected = torch.linalg.inv(precision)
    empirical = rows.mT @ rows / n  # known zero mean
    # Standard error of a Gaussian second moment: sqrt((C_ii C_jj + C_ij²) / n).
    diag = expected.diagonal()
    se = ((diag[:, None] * diag[None, :] + expected**2) / n).sqrt()
    assert ((empirical - expected).abs() <= 4 * se).all(), (empirical, expected, se)
    assert rows.mean(0).abs().max() <= 4 * (diag / n).sqrt().max()


def test_kl_rows_to_precision_rows_with_loc_matches_torch_summed_over_rows():
    g = torch.Generator().manual_seed(2)
    r, rows = 3, 6
    precision = _precision(r, g)
    tril = torch.randn(r, r, generator=g, dtype=DOUBLE).tril(-1) * 0.3 + torch.diag(
        0.5 + torch.rand(r, generator=g, dtype=DOUBLE)
    )
    loc = torch.randn(rows, r, generator=g, dtype=DOUBLE)
    q = IIDMultivariateNormal(tril, (rows,), loc=loc)
    p = PrecisionRows(precision, rows)
    prior_row = MultivariateNormal(torch.zeros(r, dtype=DOUBLE), precision_matrix=precision)
    expected = sum(
        kl_divergence(MultivariateNormal(loc[j], scale_tril=tril), prior_row) for j in range(rows)
    )
    torch.testing.assert_close(kl_rows_to_precision_rows(q, p), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kl_divergence(q, p), expected, rtol=1e-10, atol=1e-10)
    # The density with a mean, against torch's, row by row.
    value = torch.randn(rows, r, generator=g, dtype=DOUBLE)
    row_density = MultivariateNormal(loc, scale_tril=tril).log_prob(value).sum()
    torch.testing.assert_close(q.log_prob(value), row_density, rtol=1e-12, atol=1e-10)


def test_elbo_terms_under_bayes_are_the_five_kls_and_the_nll_and_are_finite():
    model, guide = build(4, num_data=10, tau=0.5, r=2, b=1.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    loss, terms = elbo_terms(model, guide, input_ids=x, labels=y)
    assert set(terms) == {
        "nll",
        "kl_precision",
        "kl_covariance",
        "kl_concentration",
        "kl_weights",
        "kl_A",
    }
    assert all(torch.isfinite(v) for v in terms.values())
    torch.testing.assert_close(loss, sum(terms.values()))
    loss.backward()
    assert guide.unconstrained[f"{LAYER}__A__scale"].grad is not None
    assert model.adapters[LAYER].lora_A.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# 1. Against the exact posterior (r = 1, Λ known)
# --------------------------------------------------------------------------------------------


def equicorrelated_design(n: int, d: int, rho: float, generator) -> torch.Tensor:
    """X (n, d) with XᵀX = n·C exactly, C = (1 - ρ)I + ρ11ᵀ: unit diagonal, correlation ρ."""
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=generator))
    c = (1 - rho) * torch.eye(d) + rho * torch.ones(d, d)
    values, vectors = torch.linalg.eigh(c)
    return math.sqrt(n) * q @ (vectors @ torch.diag(values.sqrt()) @ vectors.mT)


def exact_posterior_case(
    rho: float, lam: float, seed: int = 0, steps: int = 800, num_draws: int = 2000
):
    """Train on 16 points of correlation ρ; figures of the guide and of the exact posterior."""
    n, d, tau = 16, 4, 1.0
    g = torch.Generator().manual_seed(0)
    x = equicorrelated_design(n, d, rho, g)
    y = x @ torch.tensor([1.0, -0.5, 0.8, 0.3]) + tau * torch.randn(n, generator=g)
    model, guide = build(
        d,
        num_data=n,
        tau=tau,
        seed=seed,
        precision_df=KNOWN_DF,
        precision_scale=lam,
        sample_scaler=0.1,
    )
    fit(model, guide, {"input_ids": x, "labels": y}, steps, seed=seed, decay=DECAY)
    learned_lam = precision_mean(guide).item()
    # Exact posterior given λ = E_q[Λ] (which the huge ν0 pins at precision_scale).
    precision = learned_lam * torch.eye(d) + x.mT @ x / tau**2
    covariance = torch.linalg.inv(precision)
    mean = covariance @ x.mT @ y / tau**2
    samples = draws(guide, num_draws)
    mu = mu_columns(model)[:, 0]
    a = torch.stack([s[f"{LAYER}.A"][:, 0] for s in samples])
    per_draw = (a - mu).pow(2).mean(-1)  # the d columns share S: pool them per draw
    variance = (a - mu).pow(2).mean(0)
    return {
        "lam": learned_lam,
        "mu_error": (mu - mean).abs().max().item(),
        "ols_gap": (torch.linalg.solve(x.mT @ x, x.mT @ y) - mean).abs().max().item(),
        "factor": (variance.sqrt() / covariance.diagonal().sqrt()),
        "factor_se": (per_draw.std() / per_draw.mean() / (2 * math.sqrt(num_draws))).item(),
        "mean_field": (1 / (precision.diagonal() * covariance.diagonal())).sqrt(),
    }


def test_orthogonal_design_guide_matches_the_exact_posterior():
    """XᵀX = 16·I and λ = 16: P = 32·I, so 1/P_jj = (P⁻¹)_jj and the guide can be exact.

    The prior carries half of the precision, so the exact mean is half way from least squares
    to 0 and a wrong prior term shows (e.g. doubling tr(ΛS) in the KL of A moves the factor
    to 0.87, dropping μᵀΛμ moves μ by 0.69: both fail here).

    Measured over seeds 0-3 (800 steps): max |μ - exact mean| 0.005-0.010 (the exact sd is
    0.177, and the exact mean lies 0.707 from least squares); the sd factor (guide / exact,
    mean over the 4 columns) 0.986-1.037, per column 0.967-1.059, with a draw standard error of
    0.013 (2,000 draws of a scale mixture: the columns share S). The spread of the factor is
    optimisation noise: the single-draw gradient of σ carries the spread of ‖π‖²Σ (coefficient
    of variation ≈ 0.8). Tolerances: 0.05 on μ (5x the worst seed); ±0.08 on the mean factor
    (2x the worst deviation), ±0.12 per column (2x).
    """
    case = exact_posterior_case(rho=0.0, lam=16.0)
    assert case["lam"] == pytest.approx(16.0, rel=1e-3)
    assert case["mu_error"] < 0.05
    assert case["ols_gap"] > 3 * 0.05
    assert case["factor_se"] < 0.025
    torch.testing.assert_close(case["mean_field"], torch.ones(4))
    assert 0.92 < case["factor"].mean().item() < 1.08, case["factor"]
    assert (case["factor"] - 1).abs().max() < 0.12, case["factor"]


def test_correlated_design_guide_under_disperses_by_the_mean_field_factor():
    """XᵀX = 16·C, correlation 0.8: the exact marginal sd is √(P⁻¹)_jj = 0.329, the guide's
    (mean-field, shared S) is 1/√P_jj = 0.224: factor √(1 / (P_jj (P⁻¹)_jj)) = 0.679.

    Measured over seeds 0-3 (800 steps): max |μ - exact mean| 0.003-0.006 (exact mean 0.699
    from least squares); sd factor 0.648-0.713 (draw standard error 0.013), i.e. within 5% of
    the mean-field value. Tolerances: 0.05 on μ; the factor within 10% of the mean-field value,
    and below 0.8, well short of 1.
    """
    case = exact_posterior_case(rho=0.8, lam=4.0)
    assert case["mu_error"] < 0.05
    assert case["ols_gap"] > 3 * 0.05
    expected = case["mean_field"]
    torch.testing.assert_close(expected, torch.full((4,), 0.679), atol=1e-3, rtol=0)
    factor = case["factor"].mean().item()
    assert factor == pytest.approx(expected.mean().item(), rel=0.1), case["factor"]
    assert case["factor"].max() < 0.8, case["factor"]


# --------------------------------------------------------------------------------------------
# 2. The width shrinks with the data
# --------------------------------------------------------------------------------------------


def width_case(n: int, seed: int = 0, steps: int = 800, num_draws: int = 1500):
    """Train on n points x ~ N(0, I_4), τ = 1, weak prior λ = 0.1; widths of q(A) and f(x*)."""
    d, tau, lam = 4, 1.0, 0.1
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.tensor([1.0, -0.5, 0.8, 0.3]) + tau * torch.randn(n, generator=g)
    model, guide = build(
        d,
        num_data=n,
        tau=tau,
        seed=seed,
        precision_df=KNOWN_DF,
        precision_scale=lam,
        sample_scaler=0.1,
    )
    fit(model, guide, {"input_ids": x, "labels": y}, steps, seed=seed, decay=DECAY)
    precision = lam * torch.eye(d) + x.mT @ x / tau**2
    x_star = torch.tensor([[0.5, -1.0, 1.0, 0.5]])
    samples = draws(guide, num_draws)
    mu = mu_columns(model)[:, 0]
    a = torch.stack([s[f"{LAYER}.A"][:, 0] for s in samples])
    with torch.no_grad():
        f_star = torch.stack(
            [model.logits(x_star, deltas=model.perturbations(s)).squeeze() for s in samples]
        )
    return {
        "sd": (a - mu).pow(2).mean().sqrt().item(),  # pooled over the columns
        "guide_theory_sd": math.sqrt(d / precision.trace().item()),
        "exact_sd": torch.linalg.inv(precision).diagonal().sqrt().mean().item(),
        "f_var": f_star.var().item(),
        "f_mean_error": (f_star.mean() - x_star[0] @ mu).abs().item() / f_star.std().item(),
    }


def test_width_of_q_and_of_the_prediction_shrinks_as_one_over_root_n():
    """N = 20 → 200: sd ∝ 1/√N, so the ratio is √10 = 3.16 up to the designs' traces.

    On these designs the guide's theory (E[S] = d/tr P) gives 3.25, the exact marginal sds 3.56
    (the 20-point design is the more correlated, so its exact sds are the wider). Measured over
    seeds 0-3: sd ratio 3.17-3.64 (-3% to +12% from 3.25: each sd carries about ±6% of
    optimisation noise, see the test above, and a 1.5% draw error); variance ratio of f(x*)
    10.0-14.3 (theory 3.25² = 10.6). Tolerances: 20% on the sd ratio against the theory and the
    band [√10/1.5, 1.5√10]; the band [10/1.5², 10·1.5²] for the variance of the prediction.
    """
    small, large = width_case(20), width_case(200)
    ratio = small["sd"] / large["sd"]
    theory = small["guide_theory_sd"] / large["guide_theory_sd"]
    assert math.sqrt(10) / 1.5 < ratio < 1.5 * math.sqrt(10), ratio
    assert ratio == pytest.approx(theory, rel=0.2), (ratio, theory)
    f_ratio = small["f_var"] / large["f_var"]
    assert 10 / 1.5**2 < f_ratio < 10 * 1.5**2, f_ratio
    # The draws are centred on the plug-in prediction x*ᵀμ (a check of the δ = A - μ path).
    assert small["f_mean_error"] < 0.15 and large["f_mean_error"] < 0.15


# --------------------------------------------------------------------------------------------
# 3. The hyperposterior q(Λ) responds to the data
# --------------------------------------------------------------------------------------------


def hierarchy_case(b: float, seed: int = 0, steps: int = 800, num_draws: int = 1000):
    """r = 2, d_in = 8, ν0 = 2, V0 = I/2 (prior mean I); 200 points with τ = 0.1.

    With B = 1 the data pin down a_1j + a_2j (≈ 2 in size) tightly; with B = 0 they carry no
    information about A at all. σ starts at 1, where E_q[S] ≈ I (E‖π‖² = 0.4, E[Σ] = 2I).
    """
    r, d, n, tau = 2, 8, 200, 0.1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = x @ (2.0 * torch.randn(d, generator=g)) + tau * torch.randn(n, generator=g)
    model, guide = build(
        d,
        num_data=n,
        tau=tau,
        r=r,
        b=b,
        seed=seed,
        precision_df=2.0,
        precision_scale=1.0,
        sample_scaler=1.0,
    )
    window = []

    def record():
        window.append(precision_mean(guide))

    fit(model, guide, {"input_ids": x, "labels": y}, steps, seed=seed, decay=0.02, record=record)
    expected_s = guide_covariance(guide, draws(guide, num_draws))
    df_star, mean_star = conjugate_precision(model, guide, expected_s)
    mean = precision_mean(guide)
    last = torch.stack(window[-100:])
    return {
        "mean": mean,
        "df": guide.constrained(f"{LAYER}.precision.df").item(),
        "conjugate_df": df_star,
        "conjugate_mean": mean_star,
        "error": relative(mean, mean_star),
        "prior_error": relative(torch.eye(r), mean_star),
        "prior_distance": relative(mean, torch.eye(r)),
        "window_sd": (last.std(0).norm() / mean.norm()).item(),
        "mu": mu_columns(model),
        "expected_s": expected_s,
    }


# q(Σ)'s learned df falls to ≈ 1.3 here, inside its support (> r - 1 = 1) but below r, where
# torch's Wishart constructor warns; the library's Bartlett sampler repairs any singular draw.
@pytest.mark.filterwarnings("ignore:Low df values detected:UserWarning")
def test_informative_data_move_q_precision_to_the_conjugate_update():
    """E_q[Λ] against the conjugate mean given the learned q(A), E_q[S] from 1,000 guide draws.

    Measured over seeds 0-3 (800 steps): relative error 0.004-0.016, while the prior mean I is
    0.75-0.79 away from the conjugate mean (E_q[Λ] moved 2.2-2.6 from it); the relative spread
    of E_q[Λ] over the last 100 steps (the gradient noise) 0.012-0.016; df 9.3-10.1 against
    ν0 + d_in = 10. Tolerances: 0.05 on the error (3x the worst seed and the spread), 1.5 on df.
    """
    case = hierarchy_case(b=1.0)
    assert case["window_sd"] < 0.03, case
    assert case["error"] < 0.05, case
    assert case["prior_error"] > 0.5, case
    assert case["prior_distance"] > 1.0, case
    assert abs(case["df"] - case["conjugate_df"]) < 1.5, case


def test_uninformative_data_leave_q_a_and_q_precision_at_the_prior():
    """B = 0: y says nothing about A. The mean-field optimum then has μ = 0, E_q[Λ] = the
    prior mean I, and E_q[S] = E_q[Λ]⁻¹ (p(a_j | Λ = E Λ)); its df still grows to ν0 + d_in,
    the known over-confidence of mean-field hierarchies.

    Measured over seeds 0-3 (800 steps): max |μ| < 1e-16 (the prior sd of an entry is ≈ 1);
    ‖E_q Λ - I‖/‖I‖ 0.11-0.18 (the informative case: 2.2-2.6); relative error to the conjugate
    mean 0.07-0.12, to E_q[Λ]⁻¹ of E_q[S] 0.07-0.13; df 8.2-9.2. These errors are larger than the
    gradient noise (last-100-step spread 0.015-0.027): without data the ELBO is flat along the
    joint scale of q(Λ) and σ (coordinate ascent contracts by d_in/(ν0 + d_in) = 0.8 a sweep),
    so 800 steps leave a slow transient. Tolerances: 0.3 from the prior mean, 0.25 from the
    conjugate mean and from E_q[Λ]⁻¹ (about 2x the worst seed).
    """
    case = hierarchy_case(b=0.0)
    assert case["mu"].abs().max() < 1e-3
    assert case["prior_distance"] < 0.3, case
    assert case["error"] < 0.25, case
    inverse = torch.linalg.inv(case["mean"])
    assert relative(case["expected_s"], inverse) < 0.25, (case["expected_s"], inverse)


# --------------------------------------------------------------------------------------------
# 4. With q(A) held fixed, SVI on q(Λ) reaches the conjugate optimum
# --------------------------------------------------------------------------------------------


def conjugate_convergence_case(seed: int = 0, steps: int = 1200, average: int = 400):
    """Fix q(A) (μ with columns of sizes 1.5 and 0.5, σ = 0.5, q(Σ), q(π) at their start) and
    train only q(Λ) from the prior; the optimum is the conjugate Wishart, ν = 2 + 8 = 10."""
    r, d = 2, 8
    model, guide = build(
        d,
        num_data=4,
        tau=1.0,
        r=r,
        b=1.0,
        seed=0,
        precision_df=2.0,
        precision_scale=1.0,
        sample_scaler=0.5,
    )
    lora_a = model.adapters[LAYER].lora_A
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        lora_a.copy_(torch.randn(r, d, generator=g) * torch.tensor([[1.5], [0.5]]))
    lora_a.requires_grad_(False)
    trained = []
    for name, param in guide.named_variational_parameters():
        param.requires_grad_(name.startswith(f"{LAYER}.precision."))
        if param.requires_grad:
            trained.append(name)
    assert sorted(trained) == [
        f"{LAYER}.precision.df_unconstrained",
        f"{LAYER}.precision.scale_tril_unconstrained",
    ]
    frozen = {k: v.clone() for k, v in guide.constrained_parameters().items()}
    # q(A) is fixed, so its E[S] is exact: σ² E‖π‖² (E[Σ] + jitter·I), Dirichlet and Wishart
    # moments.
    kappa = frozen[f"{LAYER}.weights.concentration"].detach()
    norm2 = (kappa * (kappa + 1)).sum() / (kappa.sum() * (kappa.sum() + 1))
    tril = frozen[f"{LAYER}.covariance.scale_tril"].detach()
    sigma_cov = frozen[f"{LAYER}.covariance.df"].detach() * tril @ tril.mT
    expected_s = (
        frozen[f"{LAYER}.A.scale"].detach() ** 2
        * norm2
        * (sigma_cov + model.config.jitter * torch.eye(r))
    )
    df_star, mean_star = conjugate_precision(model, guide, expected_s)

    def record():
        df = guide.constrained(f"{LAYER}.precision.df").detach()
        return torch.cat([df.view(1), precision_mean(guide).flatten()])

    g = torch.Generator().manual_seed(4)
    batch = {"input_ids": torch.randn(4, d, generator=g), "labels": torch.randn(4, generator=g)}
    history = torch.stack(fit(model, guide, batch, steps, seed=seed, decay=T4_DECAY, record=record))
    for name, value in guide.constrained_parameters().items():
        if not name.startswith(f"{LAYER}.precision."):
            torch.testing.assert_close(value, frozen[name], rtol=0, atol=0)
    tail = history[-average:]
    averaged = tail.mean(0)
    return {
        "df_star": df_star,
        "df": averaged[0].item(),
        "df_last": history[-1, 0].item(),
        "df_spread": tail[:, 0].std().item(),
        "error": relative(averaged[1:].view(r, r), mean_star),
        "error_last": relative(history[-1, 1:].view(r, r), mean_star),
        "mean_spread": (tail[:, 1:].std(0).norm() / mean_star.norm()).item(),
        "start_error": relative(history[0, 1:].view(r, r), mean_star),
        "start_df": history[0, 0].item(),
    }


def test_svi_on_q_precision_alone_converges_to_the_conjugate_wishart():
    """From the prior (df 2, mean I; 0.61 from the optimum) to Wishart(10, ·) in 1,200 steps.

    Compared: the average of the last 400 iterates. Measured over seeds 0-3: df 9.76-10.04
    (last-400-step sd 0.18-0.26), relative error of the mean 0.009-0.024 (last-400-step
    relative sd 0.04-0.075; last iterate alone 0.018-0.045). Tolerances: 0.6 on df (2.5x the
    worst seed, about 2.5 step-to-step sds) and 0.06 on the mean (2.5x the worst seed).
    """
    case = conjugate_convergence_case()
    assert case["df_star"] == 10.0
    assert case["start_error"] > 0.5 and case["start_df"] < 3
    assert case["df_spread"] < 0.4 and case["mean_spread"] < 0.12, case
    assert abs(case["df"] - case["df_star"]) < 0.6, case
    assert case["error"] < 0.06, case
