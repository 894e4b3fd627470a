"""Distributions and closed-form KL divergences that torch lacks or gets wrong."""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
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

    def __init__(self, *args, **kwargs):
        with warnings.catch_warnings():
            # torch warns for r - 1 < df < r on every construction; rsample repairs the rare
            # numerically singular draw (a learned guide df may settle there).
            warnings.filterwarnings("ignore", message="Low df values detected")
            super().__init__(*args, **kwargs)

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        d = shape[-1]
        df = self.df.expand(shape[:-2]).unsqueeze(-1)
        offsets = torch.arange(d, dtype=df.dtype, device=df.device)
        chi2 = dist.Chi2(df - offsets).rsample()
        lower = torch.randn(shape, dtype=df.dtype, device=df.device).tril(-1)
        factor = self._unbroadcasted_scale_tril @ (lower + torch.diag_embed(chi2.sqrt()))
        return _repaired(factor @ factor.mT, self.max_repairs)[0]


class IIDMultivariateNormal(dist.TorchDistribution):
    """Rows drawn independently from N(m, L Lᵀ), one shared covariance, as a single event.

    The event has shape ``rows + (r,)``. With ``loc=None`` (zero means) it equals
    ``MultivariateNormal(0, scale_tril=L).expand(rows).to_event(len(rows))``, but samples with
    one matrix product and computes its log density and its KL to another such distribution
    from the single (r, r) factor instead of once per row.

    Parameters
    ----------
    scale_tril : torch.Tensor
        The lower Cholesky factor L, of shape (r, r).
    rows : tuple of int
        The shape of the array of rows, e.g. ``(K, d_in)``.
    loc : torch.Tensor, optional
        The mean of every row, shape ``rows + (r,)``; zero when None.
    """

    arg_constraints: ClassVar[dict] = {"scale_tril": constraints.lower_cholesky}
    has_rsample = True

    def __init__(
        self,
        scale_tril: torch.Tensor,
        rows: tuple[int, ...],
        loc: torch.Tensor | None = None,
        validate_args=None,
    ):
        if scale_tril.dim() != 2 or scale_tril.shape[0] != scale_tril.shape[1]:
            raise ValueError(f"scale_tril must be a square matrix, got {tuple(scale_tril.shape)}")
        self.scale_tril = scale_tril
        self.rows = torch.Size(rows)
        event_shape = self.rows + scale_tril.shape[-1:]
        if loc is not None and loc.shape != event_shape:
            raise ValueError(f"loc must have shape {tuple(event_shape)}, got {tuple(loc.shape)}")
        self.loc = loc
        super().__init__(torch.Size(), event_shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def num_rows(self) -> int:
        return self.rows.numel()

    @property
    def mean(self) -> torch.Tensor:
        return self.scale_tril.new_zeros(self.event_shape) if self.loc is None else self.loc

    @property
    def covariance_matrix(self) -> torch.Tensor:
        """Σ = L Lᵀ, shared by every row."""
        return self.scale_tril @ self.scale_tril.mT

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.scale_tril.dtype, device=self.scale_tril.device)
        draw = eps @ self.scale_tril.mT
        return draw if self.loc is None else self.loc + draw

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        r = self.scale_tril.shape[-1]
        if self.loc is not None:
            value = value - self.loc
        # Each row v becomes L⁻¹v: solve X Lᵀ = V for the rows V.
        white = torch.linalg.solve_triangular(self.scale_tril.mT, value, upper=True, left=False)
        maha = white.pow(2).flatten(-len(self.event_shape)).sum(-1)
        return -0.5 * maha - self.num_rows * (_half_logdet(self.scale_tril) + r / 2 * _LOG_2PI)

    def entropy(self) -> torch.Tensor:
        r = self.scale_tril.shape[-1]
        return self.num_rows * (_half_logdet(self.scale_tril) + r / 2 * (1 + _LOG_2PI))


_LOG_2PI = math.log(2 * math.pi)


@register_kl(IIDMultivariateNormal, IIDMultivariateNormal)
def kl_iid_mvn(q: IIDMultivariateNormal, p: IIDMultivariateNormal) -> torch.Tensor:
    """KL(q ‖ p): the number of rows times ½(tr(Σ_p⁻¹ Σ_q) - r + log|Σ_p| - log|Σ_q|).

    Zero-mean rows only (the KL of the noise rows of the paper objective).
    """
    if q.event_shape != p.event_shape:
        raise ValueError(f"event shapes differ: {q.event_shape} and {p.event_shape}")
    if q.loc is not None or p.loc is not None:
        raise NotImplementedError("kl_iid_mvn takes zero-mean rows only")
    r = q.scale_tril.shape[-1]
    trace = torch.linalg.solve_triangular(p.scale_tril, q.scale_tril, upper=False).pow(2).sum()
    per_row = 0.5 * (trace - r) + _half_logdet(p.scale_tril) - _half_logdet(q.scale_tril)
    return q.num_rows * per_row


class PrecisionRows(dist.TorchDistribution):
    """Rows drawn independently from N(0, Λ⁻¹), given the precision Λ, as a single event.

    The prior of the columns of A under ``objective="bayes"`` (docs/design.md §9): the event has
    shape ``(rows, r)``.

    Parameters
    ----------
    precision : torch.Tensor
        Λ, of shape (r, r), positive definite.
    rows : int
        The number of rows (d_in, the columns of A).
    """

    arg_constraints: ClassVar[dict] = {"precision": constraints.positive_definite}
    has_rsample = True

    def __init__(self, precision: torch.Tensor, rows: int, validate_args=None):
        if precision.dim() != 2 or precision.shape[0] != precision.shape[1]:
            raise ValueError(f"precision must be a square matrix, got {tuple(precision.shape)}")
        self.precision = precision
        self.precision_tril = torch.linalg.cholesky(precision)
        self.rows = rows
        super().__init__(torch.Size(), (rows, precision.shape[-1]), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, 2)

    @property
    def mean(self) -> torch.Tensor:
        return self.precision.new_zeros(self.event_shape)

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.precision.dtype, device=self.precision.device)
        # With Λ = P Pᵀ, the row x = ε P⁻¹ has covariance P⁻ᵀ P⁻¹ = Λ⁻¹.
        return torch.linalg.solve_triangular(self.precision_tril, eps, upper=False, left=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        r = self.precision.shape[-1]
        maha = (value @ self.precision_tril).pow(2).sum((-2, -1))
        return -0.5 * maha + self.rows * (_half_logdet(self.precision_tril) - r / 2 * _LOG_2PI)


@register_kl(IIDMultivariateNormal, PrecisionRows)
def kl_rows_to_precision_rows(q: IIDMultivariateNormal, p: PrecisionRows) -> torch.Tensor:
    """KL(q ‖ p) for rows N(m_j, S) against N(0, Λ⁻¹).

    ``½ Σ_j [tr(Λ S) + m_jᵀ Λ m_j - r - log|Λ| - log|S|]``.
    """
    if q.event_shape != p.event_shape:
        raise ValueError(f"event shapes differ: {q.event_shape} and {p.event_shape}")
    r = q.scale_tril.shape[-1]
    trace = (p.precision_tril.mT @ q.scale_tril).pow(2).sum()
    maha = 0.0 if q.loc is None else (q.loc @ p.precision_tril).pow(2).sum()
    logdets = 2 * _half_logdet(p.precision_tril) + 2 * _half_logdet(q.scale_tril)
    return 0.5 * (q.num_rows * (trace - r - logdets) + maha)


def jittered_cholesky(matrix: torch.Tensor, jitter: float) -> torch.Tensor:
    """The lower Cholesky factor of ``matrix + jitter · I``, repaired as :class:`Wishart` repairs
    its draws where rounding leaves it indefinite.

    A Wishart draw at df near d - 1 can have a condition number beyond float32's reach, so that a
    fixed ``jitter`` below its rounding error does not make it factorisable; the draw itself
    passed its own check only by the luck of that rounding.

    Raises
    ------
    ValueError
        If ``matrix`` is still indefinite after :attr:`Wishart.max_repairs` repairs (it is not a
        covariance, or holds NaN).
    """
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    _, factor, info = _repaired(matrix + jitter * eye, Wishart.max_repairs)
    if (info != 0).any():
        raise ValueError(
            f"a covariance is not positive definite even after {Wishart.max_repairs} repairs "
            f"(diagonal {matrix.diagonal(dim1=-2, dim2=-1).tolist()})"
        )
    return factor


def _repaired(
    sample: torch.Tensor, attempts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sample`` repaired, with its ``cholesky_ex`` factor and info from the last check."""
    factor, info = torch.linalg.cholesky_ex(sample)
    bad = info != 0
    if not bad.any():
        return sample, factor, info
    eye = torch.eye(sample.shape[-1], dtype=sample.dtype, device=sample.device)
    jitter = torch.finfo(sample.dtype).eps * sample.diagonal(dim1=-2, dim2=-1).mean(-1)
    for _ in range(attempts):
        sample = torch.where(bad[..., None, None], sample + jitter[..., None, None] * eye, sample)
        factor, info = torch.linalg.cholesky_ex(sample)
        bad = info != 0
        if not bad.any():
            break
        jitter = jitter * 10
    return sample, factor, info


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
