"""PEFT's LoRA and PEFT's MonteCLoRA as external baselines on our data, loop and evaluation.

PEFT is an optional dependency (the ``peft`` extra, ``peft>=0.20,<0.22``: the first versions with
``LoraConfig(monteclora_config=MontecloraConfig(...))``). Both baselines are trained by the same
loop as our methods on the loss

    mean_i[-log p(y_i | x_i)] + PEFT's regularisation loss

where the second term is ``LoraModel._get_monteclora_loss()``: the KL terms weighted by PEFT's
``kl_loss_weight`` plus, with ``use_entropy``, the sum of squared mixture weights (the cooperative
term), averaged over the adapted layers; it is zero for plain LoRA. PEFT switches its noise off in
eval mode (docs/design.md §8), so an evaluation is one deterministic pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.models.layer import default_target_modules
from monteclora_pyro.models.likelihood import Likelihood
from monteclora_pyro.models.params import restore_parameters
from monteclora_pyro.peft_interop import PEFT_ADAPTER_DIR, require_peft
from monteclora_pyro.training.base import Method


def peft_config(method: str, hf_model: nn.Module, model_cfg: MonteCLoRAConfig):
    """The ``LoraConfig`` of a PEFT baseline, sharing our rank, scaling, dropout and targets.

    For ``"peft-monteclora"``, K (``num_samples``), ε (``sample_scaler``) and η
    (``kl_loss_weight``; PEFT's default when ours is ``None``) come from ``model_cfg``, and the
    cooperative term is on (``use_entropy``) when ``cooperative_weight > 0``; PEFT's own
    ``dirichlet_prior`` and ``buffer_size`` defaults are kept. PEFT's entropy term has no weight
    of its own: it enters with weight 1.
    """
    baselines = {cls.name: cls for cls in (PeftLoRAMethod, PeftMonteCLoRAMethod)}
    if method not in baselines:
        raise ValueError(f"method={method!r} is not a PEFT baseline; allowed: {tuple(baselines)}")
    peft = require_peft()
    return peft.LoraConfig(
        r=model_cfg.r,
        lora_alpha=model_cfg.lora_alpha,
        lora_dropout=model_cfg.lora_dropout,
        target_modules=model_cfg.target_modules or default_target_modules(hf_model),
        modules_to_save=model_cfg.modules_to_save,
        monteclora_config=baselines[method].monteclora_config(peft, model_cfg),
    )


class PeftMethod(Method):
    """A PEFT-adapted classifier; subclasses choose PEFT's configuration."""

    likelihoods: ClassVar[tuple[str, ...]] = ("classification",)
    objectives: ClassVar[tuple[str, ...]] = ("paper",)  # PEFT's own objective

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
        peft = require_peft()
        self.config = peft_config(self.name, hf_model, model_cfg)
        self._bind(peft.get_peft_model(hf_model, self.config))

    def _bind(self, model: nn.Module) -> None:
        self.model = model
        self.named_params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    @staticmethod
    def monteclora_config(peft, model_cfg: MonteCLoRAConfig):
        """PEFT's ``MontecloraConfig`` of the baseline (None: plain LoRA)."""
        return None

    @classmethod
    def load(cls, run_dir: Path, hf_model: nn.Module, likelihood: Likelihood) -> PeftMethod:
        """The PEFT model saved in ``run_dir/peft_adapter``, on ``hf_model``, in eval mode."""
        peft = require_peft()
        path = Path(run_dir) / PEFT_ADAPTER_DIR
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path} holds no PEFT adapter: is {run_dir} a finished run?")
        method = cls.__new__(cls)
        method._bind(peft.PeftModel.from_pretrained(hf_model, path).eval())
        method.config = method.model.peft_config["default"]
        return method

    @property
    def network(self) -> nn.Module:
        """The module whose train/eval mode switches dropout and PEFT's noise."""
        return self.model

    @property
    def params(self) -> list[nn.Parameter]:
        return list(self.named_params.values())

    def config_dict(self) -> dict:
        """PEFT's configuration as JSON-ready values (stored in ``config.json``)."""
        data = self.config.to_dict()
        return {k: sorted(v) if isinstance(v, set) else v for k, v in data.items()}

    def regularisation(self) -> torch.Tensor:
        """PEFT's MonteCLoRA regularisation loss of the last forward pass (0 for LoRA)."""
        value = self.model.base_model._get_monteclora_loss()
        return torch.as_tensor(value, dtype=torch.float32)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-example loss of a batch and its terms ``nll`` and ``regularisation``."""
        batch = dict(batch)
        labels = batch.pop("labels")
        nll = F.cross_entropy(self.model(**batch).logits, labels)
        reg = self.regularisation()
        return nll + reg, {"nll": nll, "regularisation": reg}

    def scores(self, batch: dict, draw: None = None) -> torch.Tensor:
        return self.model(**batch).logits

    def state(self) -> dict:
        """Trainable tensors."""
        return {"model": {n: p.detach().clone() for n, p in self.named_params.items()}}

    def load_state(self, state: dict, path: Path | str) -> None:
        restore_parameters(self.named_params, state["model"], path)

    def save(self, run_dir: Path, num_samples: int, seed: int) -> None:
        """Write the adapter with PEFT's ``save_pretrained`` into ``run_dir/peft_adapter``."""
        self.model.save_pretrained(run_dir / PEFT_ADAPTER_DIR)


class PeftLoRAMethod(PeftMethod):
    """PEFT's LoRA."""

    name = "peft-lora"


class PeftMonteCLoRAMethod(PeftMethod):
    """PEFT's MonteCLoRA (its noise is off in eval mode: one deterministic prediction)."""

    name = "peft-monteclora"

    @staticmethod
    def monteclora_config(peft, model_cfg: MonteCLoRAConfig):
        defaults = peft.MontecloraConfig()
        return peft.MontecloraConfig(
            num_samples=model_cfg.num_components,
            use_entropy=model_cfg.cooperative_weight > 0,
            sample_scaler=model_cfg.sample_scaler,
            kl_loss_weight=(
                defaults.kl_loss_weight
                if model_cfg.kl_loss_weight is None
                else model_cfg.kl_loss_weight
            ),
        )
