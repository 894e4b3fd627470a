"""The MonteCLoRA sampler: a mixture-of-Gaussians guide built from the model (docs/design.md §3)."""

from __future__ import annotations

from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch import nn
from torch.distributions import transform_to

from monteclora_pyro.models.distributions import (
    IIDMultivariateNormal,
    Wishart,
    jittered_cholesky,
)
from monteclora_pyro.models.model import MonteCLoRAModel
from monteclora_pyro.models.objectives import mixture_norm, noise_distribution
from monteclora_pyro.models.params import register_params
from monteclora_pyro.sites import site_name, split_site_name


def prototype_trace(model: MonteCLoRAModel) -> pyro.poutine.Trace:
    """Trace the latent part of ``model`` once, hidden from any enclosing handler."""
    with torch.no_grad(), poutine.block():
        return poutine.trace(model.sample_latents).get_trace()


def latent_sites(model: MonteCLoRAModel) -> Iterator[tuple[str, dict]]:
    """The latent sample sites of ``model``, in execution order."""
    for name, site in prototype_trace(model).nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            yield name, site


class MonteCLoRAGuide(nn.Module):
    """Mixture-of-Gaussians guide over the adapters of a :class:`MonteCLoRAModel`.

    Per adapted layer: a Wishart over Σ with learnable Cholesky factor (Gamma per diagonal
    entry when ``covariance="diagonal"``), a Gamma over the concentration, a reparameterised
    Dirichlet over the weights and K·d_in rows ~ N(0, Σ). The variational parameters start at
    the prior. The learnable tensors are unconstrained; their param-store names are
    ``"{site}.{parameter}_unconstrained"``.

    Under ``objective="bayes"`` the noise rows give way to A itself, with columns
    N(μ_j, σ²‖π‖²Σ) given Σ and π (σ learned, initialised at ε), a Wishart over the precision
    Λ joins, and the Wishart degrees of freedom are learned (docs/design.md §9).

    The likelihood's own latent sites (``"y.{kind}"``, e.g. the observation precision of a
    regression) get the family and the parameters the likelihood names
    (:meth:`~monteclora_pyro.models.likelihood.Likelihood.guide_parameters`), initialised at
    its prior, under the same latent scale; their guide means are the model's plug-in values.

    Parameters
    ----------
    model : MonteCLoRAModel
        The model whose latent sites this guide covers. Call the guide with the model's
        arguments.
    """

    stochastic = True  # draws differ: evaluations average S of them

    def __init__(self, model: MonteCLoRAModel):
        super().__init__()
        self._model = (model,)
        self.config = model.config
        self.unconstrained = nn.ParameterDict()
        self._params: dict[str, tuple[str, constraints.Constraint]] = {}
        self._layers: list[tuple[str, int]] = []
        self._likelihood_params: dict[str, list[str]] = {}
        sites = dict(latent_sites(model))
        for path, layer in model.adapters.items():
            self._layers.append((path, layer.in_features))
            self._init_layer(path, sites)
        for name in model.likelihood_sites:
            params = model.likelihood.guide_parameters(name, sites[name]["fn"])
            for param, (value, constraint) in params.items():
                self._add(name, param, value, constraint)
            self._likelihood_params[name] = list(params)
        model.set_plug_in_source(self)

    @property
    def model(self) -> MonteCLoRAModel:
        return self._model[0]

    def _add(self, site: str, param: str, value: torch.Tensor, constraint) -> None:
        name = f"{site}.{param}"
        key = name.replace(".", "__")
        raw = transform_to(constraint).inv(value.detach().clone())
        self.unconstrained[key] = nn.Parameter(raw)
        self._params[name] = (key, constraint)

    def _add_wishart(self, name: str, prior: Wishart) -> None:
        self._add(name, "scale_tril", prior.scale_tril, constraints.softplus_lower_cholesky)
        if self.model.objective.learnable_df:
            r = prior.event_shape[-1]
            self._add(name, "df", prior.df, constraints.greater_than(r - 1.0))

    def _init_layer(self, path: str, sites: dict) -> None:
        cfg = self.config
        if site_name(path, "precision") in sites:
            self._add_wishart(
                site_name(path, "precision"), sites[site_name(path, "precision")]["fn"]
            )
        cov = sites[site_name(path, "covariance")]["fn"]
        if cfg.covariance == "full":
            self._add_wishart(site_name(path, "covariance"), cov)
        else:
            scale = 0.5 / cov.base_dist.rate
            self._add(site_name(path, "covariance"), "scale", scale, constraints.softplus_positive)
            if self.model.objective.learnable_df:
                shape = cov.base_dist.concentration
                self._add(site_name(path, "covariance"), "shape", shape, constraints.positive)
        conc_name = site_name(path, "concentration")
        if conc_name in sites:
            prior = sites[conc_name]["fn"].base_dist
            self._add(conc_name, "shape", prior.concentration, constraints.softplus_positive)
            self._add(conc_name, "rate", prior.rate, constraints.softplus_positive)
            kappa = prior.mean
        else:
            kappa = sites[site_name(path, "weights")]["fn"].concentration
        self._add(site_name(path, "weights"), "concentration", kappa, constraints.softplus_positive)
        if site_name(path, "A") in sites:
            epsilon = torch.tensor(cfg.sample_scaler, dtype=kappa.dtype, device=kappa.device)
            self._add(site_name(path, "A"), "scale", epsilon, constraints.positive)

    def named_variational_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Unconstrained variational parameters, named as in the param store."""
        for name, (key, _) in self._params.items():
            yield f"{name}_unconstrained", self.unconstrained[key]

    def constrained(self, name: str) -> torch.Tensor:
        """Constrained value of the variational parameter ``"{site}.{parameter}"``."""
        key, constraint = self._params[name]
        return transform_to(constraint)(self.unconstrained[key])

    def constrained_parameters(self) -> dict[str, torch.Tensor]:
        """Every variational parameter, constrained, keyed ``"{site}.{parameter}"``."""
        return {name: self.constrained(name) for name in self._params}

    def _df(self, name: str, prior_df: float) -> torch.Tensor:
        if f"{name}.df" in self._params:
            return self.constrained(f"{name}.df")
        return torch.as_tensor(prior_df, dtype=self._dtype, device=self._device)

    def site_distribution(self, name: str) -> dist.Distribution:
        """The guide distribution of a site that depends on no other latent site.

        Every kind but ``noise`` (given Σ) and ``A`` (given Σ and π); the likelihood's sites
        in the family it names.
        """
        if name in self._likelihood_params:
            params = {p: self.constrained(f"{name}.{p}") for p in self._likelihood_params[name]}
            return self.model.likelihood.guide_distribution(name, params)
        _, site = split_site_name(name)
        if site == "precision":
            df = self._df(name, self.config.precision_prior_df)
            return Wishart(df=df, scale_tril=self.constrained(f"{name}.scale_tril"))
        if site == "covariance":
            if self.config.covariance == "full":
                df = self._df(name, self.config.prior_df)
                return Wishart(df=df, scale_tril=self.constrained(f"{name}.scale_tril"))
            scale = self.constrained(f"{name}.scale")
            if f"{name}.shape" in self._params:
                shape = self.constrained(f"{name}.shape")
            else:
                df = torch.as_tensor(self.config.prior_df, dtype=self._dtype, device=self._device)
                shape = df / 2 * torch.ones_like(scale)
            return dist.Gamma(shape, 0.5 / scale).to_event(1)
        if site == "concentration":
            shape, rate = self.constrained(f"{name}.shape"), self.constrained(f"{name}.rate")
            return dist.Gamma(shape, rate).to_event(1)
        if site == "weights":
            return dist.Dirichlet(self.constrained(f"{name}.concentration"))
        raise ValueError(f"{name!r} has no standalone guide distribution")

    @property
    def _device(self) -> torch.device:
        return next(iter(self.unconstrained.values())).device

    @property
    def _dtype(self) -> torch.dtype:
        return next(iter(self.unconstrained.values())).dtype

    def adapter_distribution(
        self, path: str, covariance: torch.Tensor, weights: torch.Tensor
    ) -> IIDMultivariateNormal:
        """q(A | Σ, π) of a layer: columns N(μ_j, σ²‖π‖²Σ) (``objective="bayes"``)."""
        cfg = self.config
        layer = self.model.adapters[path]
        sigma = self.constrained(f"{site_name(path, 'A')}.scale")
        if cfg.covariance == "full":
            tril = jittered_cholesky(covariance, cfg.jitter)
        else:
            tril = torch.diag_embed((covariance + cfg.jitter).sqrt())
        scale = sigma * mixture_norm(weights, cfg)
        return IIDMultivariateNormal(scale * tril, (layer.in_features,), loc=layer.lora_A.mT)

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Sample every latent site of the model; takes (and ignores) the model's arguments."""
        register_params(self.named_variational_parameters())
        samples = {}
        kinds = self.model.objective.kinds
        with poutine.scale(scale=self.model.latent_scale):
            for path, in_features in self._layers:
                for kind in kinds:
                    name = site_name(path, kind)
                    if kind == "concentration" and self.config.concentration_prior == "fixed":
                        continue
                    cov = samples.get(site_name(path, "covariance"))
                    if kind == "noise":
                        fn = noise_distribution(cov, self.config, in_features)
                    elif kind == "A":
                        fn = self.adapter_distribution(
                            path, cov, samples[site_name(path, "weights")]
                        )
                    else:
                        fn = self.site_distribution(name)
                    samples[name] = pyro.sample(name, fn)
            for name in self._likelihood_params:
                samples[name] = pyro.sample(name, self.site_distribution(name))
        return samples

    def plug_in_latents(self) -> dict[str, torch.Tensor]:
        """The guide's mean of each of the likelihood's latent sites (the plug-in values)."""
        return {name: self.site_distribution(name).mean for name in self._likelihood_params}
