"""Distributions and closed-form KL divergences that torch lacks or gets wrong."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import register_kl

_EMPTY = torch.Size()


class Wishart(dist.Wishart):
    """Wishart with a plain Bartlett-decomposition ``rsample``.

    torch's own ``rsample`` tests its draws with the support check inverted, so it flags every
    valid draw as singular, warns, and draws again. This one draws once: Σ = (L T)(L T)ᵀ with
    T lower triangular, T_ii = sqrt(χ²(df - i)) and T_ij ~ N(0, 1) below the diagonal.

    At df near d - 1 the last T_ii is often tiny, and rounding can leave a draw numerically
    indefinite (about 1 in 2,500 in float32 at df = d). Such draws, and only those, get the
    smallest multiple of ``eps · mean(diag Σ) · I`` (growing tenfold) that makes their Cholesky
    factorisation succeed, so every draw passes the positive-definite support check.
    """

    max_repairs = 8

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        d = shape[-1]
        df = self.df.expand(shape[:-2]).unsqueeze(-1)
        offsets = torch.arange(d, dtype=df.dtype, device=df.device)
        chi2 = dist.Chi2(df - offsets).rsample()
        lower = torch.randn(shape, dtype=df.dtype, device=df.device).tril(-1)
        factor = self._unbroadcasted_scale_tril @ (lower + torch.diag_embed(chi2.sqrt()))
        return _repair(factor @ factor.mT, self.max_repairs)


def _repair(sample: torch.Tensor, attempts: int) -> torch.Tensor:
    bad = torch.linalg.cholesky_ex(sample).info != 0
    if not bad.any():
        return sample
    eye = torch.eye(sample.shape[-1], dtype=sample.dtype, device=sample.device)
    jitter = torch.finfo(sample.dtype).eps * sample.diagonal(dim1=-2, dim2=-1).mean(-1)
    for _ in range(attempts):
        sample = torch.where(bad[..., None, None], sample + jitter[..., None, None] * eye, sample)
        bad = torch.linalg.cholesky_ex(sample).info != 0
        if not bad.any():
            break
        jitter = jitter * 10
    return sample


def _mvdigamma(x: torch.Tensor, p: int) -> torch.Tensor:
    offsets = torch.arange(p, dtype=x.dtype, device=x.device) / 2
    return torch.digamma(x.unsqueeze(-1) - offsets).sum(-1)


def _half_logdet(scale_tril: torch.Tensor) -> torch.Tensor:
    return scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)


@register_kl(torch.distributions.Wishart, torch.distributions.Wishart)
def kl_wishart_wishart(
    q: torch.distributions.Wishart, p: torch.distributions.Wishart
) -> torch.Tensor:
    """KL(q ‖ p) between Wishart distributions of the same dimension.

    With q = W(n_q, S_q) and p = W(n_p, S_p) in dimension d:
    ``n_p/2 (log|S_p| - log|S_q|) + n_q/2 (tr(S_p⁻¹ S_q) - d) + log Γ_d(n_p/2)
    - log Γ_d(n_q/2) + (n_q - n_p)/2 ψ_d(n_q/2)``.
    """
    d = q.event_shape[-1]
    if p.event_shape[-1] != d:
        raise ValueError(f"Wishart dimensions differ: {d} and {p.event_shape[-1]}")
    lq, lp = q.scale_tril, p.scale_tril
    lq, lp = torch.broadcast_tensors(lq, lp)
    trace = torch.linalg.solve_triangular(lp, lq, upper=False).pow(2).sum((-2, -1))
    nq, np_ = q.df, p.df
    return (
        np_ * (_half_logdet(lp) - _half_logdet(lq))
        + nq / 2 * (trace - d)
        + torch.mvlgamma(np_ / 2, d)
        - torch.mvlgamma(nq / 2, d)
        + (nq - np_) / 2 * _mvdigamma(nq / 2, d)
    )
