"""Plain LoRA behind the guide interface: every latent site of the adapters pinned, A = μ exactly.

The likelihood's own latent sites (e.g. the observation precision of a regression) are point
estimates instead: maximum likelihood, at no KL (see :class:`LoRAGuide`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.distributions import biject_to, register_kl

from monteclora_pyro.guides.monteclora import latent_sites
from monteclora_pyro.models.model import MonteCLoRAModel
from monteclora_pyro.sites import split_site_name


class PinnedDelta(dist.Delta):
    """A point mass whose KL to q is ``log_density - log q(value)``.

    Pyro's KL for ``Delta`` ignores ``log_density``; this one keeps it, so that a point mass
    carrying the model's log density contributes exactly zero to the ELBO.
    """


@register_kl(PinnedDelta, dist.Distribution)
def _kl_pinned_delta(p: PinnedDelta, q: dist.Distribution) -> torch.Tensor:
    return p.log_density - q.log_prob(p.v)


def _pinned_value(site: dict) -> torch.Tensor:
    kind = split_site_name(site["name"])[1]
    fn = site["fn"]
    if kind == "noise":
        return torch.zeros_like(site["value"])
    if kind == "weights":
        return torch.full_like(site["value"], 1.0 / site["value"].shape[-1])
    return fn.mean


class LoRAGuide(nn.Module):
    """Deterministic LoRA as a guide: no noise and no KL terms.

    Each latent site of the adapters is a point mass: the noise at zero (so A = μ), the
    weights uniform, the covariance and concentration at their prior means. Each point mass
    carries the model's log density at its value, so the latent sites add exactly nothing to
    the ELBO, and with uniform weights the cooperative penalty is zero: the loss is the scaled
    negative log-likelihood of plain LoRA.

    The likelihood's own latent sites (``"y.{kind}"``) are learnable point masses, starting
    at the prior mean and carrying the prior's log density at their current value, so they
    too add exactly nothing (value and gradient) and are fitted by maximum likelihood: plain
    LoRA regression learns its noise precision as an ordinary Gaussian-likelihood fit does.
    (Pinning it at the prior mean would make the NLL and interval coverage of LoRA measure
    the prior rather than the fit.) These are LoRA's only learnable parameters besides the
    model's, and they are the plug-in values of the prediction.

    Parameters
    ----------
    model : MonteCLoRAModel
        The model to pair with; call the guide with the model's arguments.
    """

    stochastic = False  # every draw is A = μ: one prediction

    def __init__(self, model: MonteCLoRAModel):
        super().__init__()
        if not model.objective.pinnable:
            raise ValueError(
                f"LoRAGuide pins the latent sites of the paper objective; objective="
                f"{model.objective.name!r} has A itself as a latent site: use MonteCLoRAGuide"
            )
        self._model = (model,)
        sites = dict(latent_sites(model))
        pinned = {name: _pinned_value(site) for name, site in sites.items()}
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(poutine.condition(model.sample_latents, data=pinned)).get_trace()
        self._sites: list[tuple[str, int]] = []
        self.points = nn.ParameterDict()
        self._points: dict[str, tuple[str, object, int]] = {}
        for name in model.likelihood_sites:
            prior = sites.pop(name)["fn"]
            key = name.replace(".", "__")
            transform = biject_to(prior.support)
            self.points[key] = nn.Parameter(transform.inv(prior.mean.detach().clone()))
            self._points[name] = (key, transform, prior.event_dim)
        model.set_plug_in_source(self)
        for name, site in sites.items():
            key = name.replace(".", "__")
            log_density = trace.nodes[name]["fn"].log_prob(pinned[name])
            self.register_buffer(f"{key}__value", pinned[name], persistent=False)
            self.register_buffer(f"{key}__log_density", log_density, persistent=False)
            self._sites.append((name, site["fn"].event_dim))

    def named_variational_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The point estimates of the likelihood's sites, unconstrained (none otherwise)."""
        for name, (key, _, _) in self._points.items():
            yield f"{name}.value_unconstrained", self.points[key]

    def plug_in_latents(self) -> dict[str, torch.Tensor]:
        """The point estimates of the likelihood's latent sites."""
        return {
            name: transform(self.points[key]) for name, (key, transform, _) in self._points.items()
        }

    @property
    def model(self) -> MonteCLoRAModel:
        return self._model[0]

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Pin every latent site; takes (and ignores) the model's arguments."""
        samples = {}
        with poutine.scale(scale=self.model.latent_scale):
            for name, event_dim in self._sites:
                key = name.replace(".", "__")
                point = PinnedDelta(
                    getattr(self, f"{key}__value"),
                    log_density=getattr(self, f"{key}__log_density"),
                    event_dim=event_dim,
                )
                samples[name] = pyro.sample(name, point)
            priors = self.model.likelihood_priors()
            for name, value in self.plug_in_latents().items():
                point = PinnedDelta(
                    value,
                    log_density=priors[name].log_prob(value),
                    event_dim=self._points[name][2],
                )
                samples[name] = pyro.sample(name, point)
        return samples
