"""PEFT's LoRA and PEFT's MonteCLoRA as external baselines on our data, loop and evaluation.

PEFT is an optional dependency (the ``peft`` extra, ``peft>=0.20,<0.22``: the first versions with
``LoraConfig(monteclora_config=MontecloraConfig(...))``). Both baselines are trained by the same
loop as our methods (:class:`monteclora_pyro.training.Trainer`) on the loss

    mean_i[-log p(y_i | x_i)] + PEFT's regularisation loss

where the second term is ``LoraModel._get_monteclora_loss()``: the KL terms weighted by PEFT's
``kl_loss_weight`` plus, with ``use_entropy``, the sum of squared mixture weights (the cooperative
term), averaged over the adapted layers; it is zero for plain LoRA. PEFT switches its noise off in
eval mode (DESIGN.md §7), so both prediction modes are the one deterministic pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.evaluation import Predictions, evaluating
from monteclora_pyro.models.layer import default_target_modules
from monteclora_pyro.models.params import restore_parameters

PEFT_METHODS = ("peft-lora", "peft-monteclora")
PEFT_ADAPTER_DIR = "peft_adapter"
PEFT_REQUIREMENT = "peft>=0.20,<0.22"


def require_peft():
    """Import ``peft``, or fail with the command that installs a version with MonteCLoRA."""
    try:
        import peft
    except ImportError as err:
        raise RuntimeError(
            "the PEFT baselines need the optional extra 'peft': "
            f"pip install 'monteclora-pyro[peft]' (or pip install '{PEFT_REQUIREMENT}')"
        ) from err
    if not hasattr(peft, "MontecloraConfig"):
        raise RuntimeError(
            f"peft {peft.__version__} has no MontecloraConfig; install '{PEFT_REQUIREMENT}'"
        )
    return peft


def peft_config(method: str, hf_model: nn.Module, model_cfg: MonteCLoRAConfig):
    """The ``LoraConfig`` of a PEFT baseline, sharing our rank, scaling, dropout and targets.

    For ``"peft-monteclora"``, K (``num_samples``), ε (``sample_scaler``) and η
    (``kl_loss_weight``; PEFT's default when ours is ``None``) come from ``model_cfg``, and the
    cooperative term is on (``use_entropy``) when ``cooperative_weight > 0``; PEFT's own
    ``dirichlet_prior`` and ``buffer_size`` defaults are kept. PEFT's entropy term has no weight
    of its own: it enters with weight 1.
    """
    if method not in PEFT_METHODS:
        raise ValueError(f"method={method!r} is not a PEFT baseline; allowed: {PEFT_METHODS}")
    peft = require_peft()
    monteclora = None
    if method == "peft-monteclora":
        defaults = peft.MontecloraConfig()
        monteclora = peft.MontecloraConfig(
            num_samples=model_cfg.num_components,
            use_entropy=model_cfg.cooperative_weight > 0,
            sample_scaler=model_cfg.sample_scaler,
            kl_loss_weight=(
                defaults.kl_loss_weight
                if model_cfg.kl_loss_weight is None
                else model_cfg.kl_loss_weight
            ),
        )
    return peft.LoraConfig(
        r=model_cfg.r,
        lora_alpha=model_cfg.lora_alpha,
        lora_dropout=model_cfg.lora_dropout,
        target_modules=model_cfg.target_modules or default_target_modules(hf_model),
        modules_to_save=model_cfg.modules_to_save,
        monteclora_config=monteclora,
    )


class PeftMethod:
    """A PEFT-adapted classifier behind the interface the training loop uses.

    Parameters
    ----------
    method : {"peft-lora", "peft-monteclora"}
        The baseline.
    hf_model : nn.Module
        A Hugging Face sequence classifier; PEFT wraps it in place.
    model_cfg : MonteCLoRAConfig
        Our configuration; see :func:`peft_config` for what is shared.
    """

    def __init__(self, method: str, hf_model: nn.Module, model_cfg: MonteCLoRAConfig):
        peft = require_peft()
        self.method = method
        self.config = peft_config(method, hf_model, model_cfg)
        self.model = peft.get_peft_model(hf_model, self.config)
        self.named_params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.params = list(self.named_params.values())

    @property
    def network(self) -> nn.Module:
        """The module whose train/eval mode switches dropout and PEFT's noise."""
        return self.model

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

    def predict(
        self, loader: DataLoader, num_samples: int, seed: int, progress: bool = False
    ) -> Predictions:
        """Deterministic predictions; both modes are the same single pass (S = 1)."""
        del num_samples, seed  # PEFT has no posterior to draw from
        return predict_deterministic(self.model, loader, progress)

    def state(self) -> dict:
        """Trainable tensors, for checkpoints."""
        return {"model": {n: p.detach().clone() for n, p in self.named_params.items()}}

    def load_state(self, state: dict, path: Path) -> None:
        """Restore :meth:`state`, refusing a checkpoint of other parameters."""
        restore_parameters(self.named_params, state["model"], path)

    def save(self, run_dir: Path, num_samples: int, seed: int) -> None:
        """Write the adapter with PEFT's ``save_pretrained`` into ``run_dir/peft_adapter``."""
        self.model.save_pretrained(run_dir / PEFT_ADAPTER_DIR)


def load_peft_run(run_dir: str | Path, hf_model: nn.Module) -> nn.Module:
    """The PEFT model saved in ``run_dir/peft_adapter``, on ``hf_model``, in eval mode."""
    peft = require_peft()
    path = Path(run_dir) / PEFT_ADAPTER_DIR
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} holds no PEFT adapter: is {run_dir} a finished run?")
    return peft.PeftModel.from_pretrained(hf_model, path).eval()


@torch.no_grad()
def predict_deterministic(
    model: nn.Module, loader: DataLoader, progress: bool = False
) -> Predictions:
    """Class probabilities of one eval-mode pass; the single draw equals the mean."""
    labels, probs = [], []
    with evaluating(model) as device:
        for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
            batch = dict(batch)
            labels.append(batch.pop("labels"))
            batch = {k: v.to(device) for k, v in batch.items()}
            probs.append(model(**batch).logits.softmax(-1))
    mean = torch.cat(probs).double().cpu().numpy()
    return Predictions(
        labels=torch.cat(labels).numpy(), mean_probs=mean, draw_probs=np.expand_dims(mean, 0)
    )
