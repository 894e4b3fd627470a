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

from monteclora_pyro.models.distributions import Wishart
from monteclora_pyro.models.model import MonteCLoRAModel
from monteclora_pyro.models.objectives import noise_distribution
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
        sites = dict(latent_sites(model))
        for path, layer in model.adapters.items():
            self._layers.append((path, layer.in_features))
            self._init_layer(path, sites)

    @property
    def model(self) -> MonteCLoRAModel:
        return self._model[0]

    def _add(self, site: str, param: str, value: torch.Tensor, constraint) -> None:
        name = f"{site}.{param}"
        key = name.replace(".", "__")
        raw = transform_to(constraint).inv(value.detach().clone())
        self.unconstrained[key] = nn.Parameter(raw)
        self._params[name] = (key, constraint)

    def _init_layer(self, path: str, sites: dict) -> None:
        cfg = self.config
        cov = sites[site_name(path, "covariance")]["fn"]
        if cfg.covariance == "full":
            self._add(
                site_name(path, "covariance"),
                "scale_tril",
                cov.scale_tril,
                constraints.softplus_lower_cholesky,
            )
        else:
            scale = 0.5 / cov.base_dist.rate
            self._add(site_name(path, "covariance"), "scale", scale, constraints.softplus_positive)
        conc_name = site_name(path, "concentration")
        if conc_name in sites:
            prior = sites[conc_name]["fn"].base_dist
            self._add(conc_name, "shape", prior.concentration, constraints.softplus_positive)
            self._add(conc_name, "rate", prior.rate, constraints.softplus_positive)
            kappa = prior.mean
        else:
            kappa = sites[site_name(path, "weights")]["fn"].concentration
        self._add(site_name(path, "weights"), "concentration", kappa, constraints.softplus_positive)

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

    def site_distribution(self, name: str) -> dist.Distribution:
        """The guide distribution of a latent site other than ``noise`` (which depends on Σ)."""
        _, site = split_site_name(name)
        if site == "covariance":
            df = torch.as_tensor(self.config.prior_df, dtype=self._dtype, device=self._device)
            if self.config.covariance == "full":
                return Wishart(df=df, scale_tril=self.constrained(f"{name}.scale_tril"))
            scale = self.constrained(f"{name}.scale")
            return dist.Gamma(df / 2 * torch.ones_like(scale), 0.5 / scale).to_event(1)
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

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Sample every latent site of the model; takes (and ignores) the model's arguments."""
        register_params(self.named_variational_parameters())
        samples = {}
        with poutine.scale(scale=self.model.latent_scale):
            for path, in_features in self._layers:
                for site in ("covariance", "concentration", "weights"):
                    name = site_name(path, site)
                    if site == "concentration" and self.config.concentration_prior == "fixed":
                        continue
                    samples[name] = pyro.sample(name, self.site_distribution(name))
                cov = samples[site_name(path, "covariance")]
                name = site_name(path, "noise")
                samples[name] = pyro.sample(name, noise_distribution(cov, self.config, in_features))
        return samples
