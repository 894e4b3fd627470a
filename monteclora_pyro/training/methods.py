"""Our Pyro methods (MonteCLoRA and LoRA) and the registry of every method by name."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pyro
import torch
from torch import nn

from monteclora_pyro import runs
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.guides import LoRAGuide, MonteCLoRAGuide
from monteclora_pyro.infer import draw_guide, draw_prior, elbo_terms, posterior_deltas
from monteclora_pyro.io import load_adapter, save_adapter
from monteclora_pyro.models import MonteCLoRAModel
from monteclora_pyro.models.likelihood import Likelihood, resolve_likelihood
from monteclora_pyro.models.params import restore_parameters
from monteclora_pyro.peft_interop import load_peft_adapter
from monteclora_pyro.sites import LARGE_KINDS, split_site_name
from monteclora_pyro.training.base import Method
from monteclora_pyro.training.from_run import load_run_adapter
from monteclora_pyro.training.peft import PeftLoRAMethod, PeftMonteCLoRAMethod


class PyroMethod(Method):
    """Our Pyro model with a guide; subclasses choose the guide.

    The loss is the negative ELBO of :func:`~monteclora_pyro.infer.elbo_terms` per training
    example; the parameters are μ, B, the head and the guide's variational parameters.
    """

    guide_class: ClassVar[type[nn.Module]]

    def __init__(
        self,
        hf_model: nn.Module,
        model_cfg: MonteCLoRAConfig,
        *,
        num_data: int,
        likelihood: Likelihood,
        from_peft: str | None = None,
        from_run: str | None = None,
    ):
        model = MonteCLoRAModel(hf_model, model_cfg, num_data=num_data, likelihood=likelihood)
        if from_peft is not None:  # post-hoc: μ, B and the head frozen at the adapter's
            load_peft_adapter(model, from_peft, freeze=True)
        if from_run is not None:
            load_run_adapter(model, from_run)
        self._bind(model, self.guide_class(model))

    def _bind(self, model: MonteCLoRAModel, guide: nn.Module) -> None:
        self.model, self.guide = model, guide
        self.kl_factor = 1.0
        self._params = [p for _, p in model.trainable_parameters() if p.requires_grad]
        self._params += list(guide.parameters())

    @classmethod
    def from_parts(cls, model: MonteCLoRAModel, guide: nn.Module) -> PyroMethod:
        """The method of an existing model and guide."""
        method = cls.__new__(cls)
        method._bind(model, guide)
        return method

    @classmethod
    def load(cls, run_dir: Path, hf_model: nn.Module, likelihood: Likelihood) -> PyroMethod:
        return cls.from_parts(*load_adapter(run_dir, hf_model))

    @property
    def network(self) -> nn.Module:
        return self.model.hf_model

    @property
    def params(self) -> list[nn.Parameter]:
        return self._params

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The negative ELBO of a batch and its terms, per training example, its KL terms
        (``kl_*``) times ``kl_factor`` (the trainer's delay and warm-up).

        Pyro's and torch's argument and support checks are off here: they cost a few per cent of
        a step, and the loop checks the loss, logits and gradients for non-finite values itself.
        """
        with pyro.validation_enabled(False):
            loss, terms = elbo_terms(self.model, self.guide, **batch)
        n = self.model.num_data
        if self.kl_factor != 1.0:
            terms = {k: v * self.kl_factor if k.startswith("kl_") else v for k, v in terms.items()}
            loss = sum(terms.values())
        return loss / n, {k: v / n for k, v in terms.items()}

    def set_kl_factor(self, factor: float) -> None:
        self.kl_factor = factor

    def draws(self, num_samples: int, seed: int) -> list[dict[str, torch.Tensor]]:
        """The perturbations δ of A of S seeded guide draws (none for LoRA's pinned guide)."""
        return posterior_deltas(self.model, self.guide, num_samples, seed)

    def scores(self, batch: dict, draw: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.model.logits(**batch, deltas=draw)

    def state(self) -> dict:
        """Point estimates and variational parameters."""
        return {
            "model": {n: p.detach().clone() for n, p in self.model.trainable_parameters()},
            "guide": self.guide.state_dict(),
        }

    def load_state(self, state: dict, path: Path | str) -> None:
        restore_parameters(dict(self.model.trainable_parameters()), state["model"], path)
        self.guide.load_state_dict(state["guide"])

    def save(self, run_dir: Path, num_samples: int, seed: int) -> None:
        """Write the adapter (μ, B, head and variational parameters)."""
        save_adapter(run_dir, self.model, self.guide)


class MonteCLoRAMethod(PyroMethod):
    """MonteCLoRA: the MonteCLoRA guide; S posterior draws at evaluation."""

    name = "monteclora"
    guide_class = MonteCLoRAGuide
    post_hoc = True

    def save(self, run_dir: Path, num_samples: int, seed: int) -> None:
        """Also write S posterior and S prior draws of the hyperprior sites."""
        super().save(run_dir, num_samples, seed)
        groups = {
            "posterior": draw_guide(self.guide, num_samples, seed),
            "prior": draw_prior(self.model, num_samples, seed + 1),
        }
        for group, draws in groups.items():
            names = [n for n in draws[0] if split_site_name(n)[1] not in LARGE_KINDS]
            arrays = {n: torch.stack([d[n] for d in draws]).detach().cpu().numpy() for n in names}
            runs.write_samples(run_dir, group, arrays)


class LoRAMethod(PyroMethod):
    """Plain LoRA: every latent site pinned; one deterministic prediction."""

    name = "lora"
    guide_class = LoRAGuide
    objectives = ("paper",)


class MCDropoutMethod(LoRAMethod):
    """MC dropout: LoRA trained with dropout, evaluated with dropout on for S passes.

    Every dropout module of the network (the backbone's and the adapters' ``lora_dropout``)
    stays active in the S draws; draw s has its own random stream, seeded from the evaluation
    seed, which advances batch by batch. The plug-in prediction is the eval-mode pass.
    """

    name = "mc-dropout"

    def __init__(self, hf_model: nn.Module, model_cfg: MonteCLoRAConfig, **kwargs):
        if model_cfg.lora_dropout <= 0:
            raise ValueError(
                "method 'mc-dropout' needs MonteCLoRAConfig.lora_dropout > 0 (e.g. 0.1), got "
                f"{model_cfg.lora_dropout}"
            )
        super().__init__(hf_model, model_cfg, **kwargs)

    def draws(self, num_samples: int, seed: int) -> list[torch.Generator]:
        """One CPU generator per draw: the stream of its dropout masks."""
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} is invalid: it must be >= 1")
        return [torch.Generator().manual_seed(seed * 1_000_003 + s) for s in range(num_samples)]

    def scores(self, batch: dict, draw: torch.Generator | None = None) -> torch.Tensor:
        if draw is None:
            return self.model.logits(**batch)
        dropouts = [m for m in self.network.modules() if isinstance(m, nn.Dropout)]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(draw.get_state())
            for module in dropouts:
                module.train()
            try:
                out = self.model.logits(**batch)
            finally:
                for module in dropouts:
                    module.eval()
            draw.set_state(torch.get_rng_state())
        return out


METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        MonteCLoRAMethod,
        LoRAMethod,
        MCDropoutMethod,
        PeftLoRAMethod,
        PeftMonteCLoRAMethod,
    )
}
METHOD_NAMES = tuple(METHODS)


def build_method(
    name: str,
    hf_model: nn.Module,
    model_cfg: MonteCLoRAConfig,
    *,
    num_data: int,
    likelihood: str | Likelihood | None = None,
    from_peft: str | None = None,
    from_run: str | None = None,
) -> Method:
    """The method called ``name``, adapting ``hf_model``."""
    if name not in METHODS:
        raise ValueError(f"method={name!r} is invalid: allowed values are {METHOD_NAMES}")
    return METHODS[name](
        hf_model,
        model_cfg,
        num_data=num_data,
        likelihood=resolve_likelihood(hf_model, likelihood),
        from_peft=from_peft,
        from_run=from_run,
    )
