"""The interface every fine-tuning method implements for the training loop and evaluation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from monteclora_pyro.models.likelihood import Likelihood


class Method(ABC):
    """A fine-tuning method: what it trains, how it predicts, what it saves and resumes.

    The training loop (:class:`~monteclora_pyro.training.loop.Trainer`), the data-parallel
    wrapper and :func:`~monteclora_pyro.training.evaluation.evaluate` use nothing else. A new
    method is one subclass registered in :data:`monteclora_pyro.training.methods.METHODS`.

    Parameters
    ----------
    hf_model : nn.Module
        The backbone; the method adapts it in place.
    model_cfg : MonteCLoRAConfig
        Rank, scaling, targets and (for MonteCLoRA) the priors.
    num_data : int
        Size of the training set.
    likelihood : Likelihood
        What the labels observe.
    from_peft : str, optional
        A PEFT LoRA adapter to start from (methods with ``post_hoc`` only).
    from_run : str, optional
        A finished run of ours whose adapter to start from (methods with ``post_hoc`` only).
    """

    name: ClassVar[str]
    likelihoods: ClassVar[tuple[str, ...] | None] = None  # None: every likelihood
    objectives: ClassVar[tuple[str, ...] | None] = None  # None: every objective
    post_hoc: ClassVar[bool] = False  # can train from an adapter (from_peft, from_run)
    guide: nn.Module | None = None  # the Pyro guide, if the method has one

    @property
    @abstractmethod
    def network(self) -> nn.Module:
        """The module whose train/eval mode switches dropout."""

    @property
    @abstractmethod
    def params(self) -> list[nn.Parameter]:
        """The trainable parameters, in a fixed order (optimiser and checkpoints)."""

    def variational_parameters(self) -> dict[str, nn.Parameter]:
        """The guide's variational parameters by param-store name (none without a guide)."""
        return {} if self.guide is None else dict(self.guide.named_variational_parameters())

    def set_kl_factor(self, factor: float) -> None:
        """Multiply the KL terms by ``factor`` (``guide_delay_ratio``, ``kl_warmup_steps``)."""
        if factor != 1.0:
            raise ValueError(
                f"method {self.name!r} has no KL terms to delay or warm up "
                "(guide_delay_ratio, kl_warmup_steps)"
            )

    @abstractmethod
    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of a batch per training example, and its named terms."""

    def draws(self, num_samples: int, seed: int) -> list[Any]:
        """The S draws an evaluation averages over, taken once from their own seeded stream.

        Empty for a method without a posterior: its one prediction is the plug-in one.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} is invalid: it must be >= 1")
        return []

    @abstractmethod
    def scores(self, batch: dict, draw: Any = None) -> torch.Tensor:
        """What the likelihood scores for a batch: at the plug-in weights, or at one draw."""

    def to(self, device: torch.device) -> None:
        """Move what the method trains or draws from to ``device``."""
        if device.type == "cpu":
            return
        self.network.to(device)
        if self.guide is not None:
            self.guide.to(device)

    @abstractmethod
    def state(self) -> dict:
        """Everything a checkpoint needs to restore the trained parameters."""

    @abstractmethod
    def load_state(self, state: dict, path: Path | str) -> None:
        """Restore :meth:`state`, refusing a checkpoint of other parameters."""

    @abstractmethod
    def save(self, run_dir: Path, num_samples: int, seed: int) -> None:
        """Write the method's artefacts into a finished run's directory."""

    def config_dict(self) -> dict | None:
        """Extra configuration stored in ``config.json`` (e.g. PEFT's), or None."""
        return None

    @classmethod
    @abstractmethod
    def load(cls, run_dir: Path, hf_model: nn.Module, likelihood: Likelihood) -> Method:
        """The trained method saved in ``run_dir``, rebuilt around a fresh ``hf_model``."""
