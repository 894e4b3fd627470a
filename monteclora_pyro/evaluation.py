"""Prediction in the two modes of DESIGN.md §5, and the metrics of a prediction set."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pyro import poutine
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from monteclora_pyro.files import atomic_write
from monteclora_pyro.guides import MonteCLoRAGuide
from monteclora_pyro.metrics import classification_report
from monteclora_pyro.models import MonteCLoRAModel
from monteclora_pyro.models.likelihood import response_log_probs

MODES = ("posterior_mean", "posterior_predictive")
REPORT_METRICS = ("mcc", "f1")


@dataclass
class Predictions:
    """Class probabilities on an evaluation set.

    Attributes
    ----------
    labels : np.ndarray
        True labels, shape (n,).
    mean_probs : np.ndarray
        Posterior-mean (A = μ) probabilities, shape (n, C).
    draw_probs : np.ndarray
        Per-draw probabilities of S posterior draws, shape (S, n, C); their average is the
        posterior predictive. A LoRA guide has one draw, equal to the posterior mean.
    """

    labels: np.ndarray
    mean_probs: np.ndarray
    draw_probs: np.ndarray

    @property
    def predictive_probs(self) -> np.ndarray:
        """Bayesian model average of the draws, shape (n, C)."""
        return self.draw_probs.mean(0)

    def save(self, path: str | Path) -> None:
        """Write ``labels``, ``mean_probs`` and ``draw_probs`` to an ``.npz`` file."""
        arrays = {
            "labels": self.labels,
            "mean_probs": self.mean_probs,
            "draw_probs": self.draw_probs,
        }

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        """Read a file written by :meth:`save`."""
        with np.load(path) as data:
            return cls(data["labels"], data["mean_probs"], data["draw_probs"])


def draw_guide(guide: nn.Module, num_samples: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``num_samples`` draws of every latent site from the guide, from their own seeded stream.

    The same ``(num_samples, seed)`` always gives the same draws, whatever the global RNG state.
    """
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(guide)):
        torch.manual_seed(seed)
        return [guide() for _ in range(num_samples)]


def _cuda_devices(module: nn.Module) -> list[int]:
    """CUDA devices holding ``module``'s parameters or buffers, whose streams a draw uses."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return sorted({t.device.index for t in tensors if t.is_cuda})


def draw_prior(
    model: MonteCLoRAModel, num_samples: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """``num_samples`` draws of every latent site from the model's priors."""
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(model)):
        torch.manual_seed(seed)
        draws = []
        for _ in range(num_samples):
            trace = poutine.trace(model.sample_latents).get_trace()
            draws.append(
                {
                    name: site["value"]
                    for name, site in trace.nodes.items()
                    if site["type"] == "sample"
                }
            )
        return draws


def save_latent_samples(
    path: str | Path, draws: list[dict[str, torch.Tensor]], skip: tuple[str, ...] = ("noise",)
) -> None:
    """Stack draws into an ``.npz`` file: one array (S, *site shape) per site name.

    Sites whose kind is in ``skip`` are left out (the noise has K·d_in·r entries per layer).
    """
    names = [n for n in draws[0] if n.rpartition(".")[2] not in skip]
    arrays = {n: torch.stack([d[n] for d in draws]).detach().cpu().numpy() for n in names}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(Path(path), write)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[torch.device]:
    """Put ``module`` in eval mode (no dropout) and yield its device; restore the mode after."""
    was_training = module.training
    module.eval()
    try:
        yield next(module.parameters()).device  # a GPU in data-parallel runs
    finally:
        module.train(was_training)


def posterior_deltas(
    model: MonteCLoRAModel, guide: nn.Module, num_samples: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """The perturbations of S seeded guide draws; none for a guide without noise (LoRA)."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} is invalid: it must be >= 1")
    if not isinstance(guide, MonteCLoRAGuide):
        return []
    return [model.perturbations(d) for d in draw_guide(guide, num_samples, seed)]


@torch.no_grad()
def predict(
    model: MonteCLoRAModel,
    guide: nn.Module,
    loader: DataLoader,
    num_samples: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> Predictions:
    """Posterior-mean and posterior-predictive class probabilities over ``loader``.

    The S posterior draws are taken once, from their own seeded random stream, and each is
    applied to the whole evaluation set, so draw s is one set of adapter weights.
    """
    if getattr(model, "likelihood", "classification") == "next_token":
        raise ValueError("a next-token model has no class probabilities: use token_metrics")
    deltas = posterior_deltas(model, guide, num_samples, seed)
    labels, mean_probs, draw_probs = [], [], []
    with evaluating(model.hf_model) as device:
        for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
            batch = dict(batch)
            labels.append(batch.pop("labels"))
            batch = {k: v.to(device) for k, v in batch.items()}
            mean = model.logits(**batch).softmax(-1)
            mean_probs.append(mean)
            if deltas:
                draw_probs.append(
                    torch.stack([model.logits(**batch, deltas=d).softmax(-1) for d in deltas])
                )
            else:
                draw_probs.append(mean.unsqueeze(0))
    return Predictions(
        labels=torch.cat(labels).numpy(),
        mean_probs=torch.cat(mean_probs).double().cpu().numpy(),
        draw_probs=torch.cat(draw_probs, dim=1).double().cpu().numpy(),
    )


def prediction_metrics(predictions: Predictions, extra: tuple[str, ...] = ()) -> dict:
    """Accuracy, NLL, ECE (15 equal-width bins), Brier and ``extra`` for both modes."""
    extra = tuple(m for m in extra if m in REPORT_METRICS)
    probs = {
        "posterior_mean": predictions.mean_probs,
        "posterior_predictive": predictions.predictive_probs,
    }
    return {
        mode: classification_report(_normalise(p), predictions.labels, extra=extra)
        for mode, p in probs.items()
    }


def _normalise(probs: np.ndarray) -> np.ndarray:
    return probs / probs.sum(-1, keepdims=True)


@torch.no_grad()
def token_metrics(
    model: MonteCLoRAModel,
    guide: nn.Module,
    loader: DataLoader,
    num_samples: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Per-token NLL and perplexity of held-out responses, for a next-token model.

    Only response tokens count (``labels != -100``). The posterior mean uses A = μ; the
    posterior predictive averages each token's probability over S guide draws, taken once
    from their own seeded stream as in :func:`predict` (a LoRA guide has none: both modes
    agree).

    Returns
    -------
    dict
        ``{"posterior_mean": {...}, "posterior_predictive": {...}}``, each with ``nll`` (mean
        over tokens, natural log), ``perplexity`` (``exp(nll)``) and ``num_tokens``.
    """
    if getattr(model, "likelihood", None) != "next_token":
        raise ValueError("token_metrics needs a MonteCLoRAModel with likelihood='next_token'")
    deltas = posterior_deltas(model, guide, num_samples, seed)
    mean_lp, draw_lp = [], []
    with evaluating(model.hf_model) as device:
        for batch in tqdm(loader, desc="token metrics", disable=not progress, leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            mean_lp.append(response_log_probs(model.logits(**batch), labels).double())
            draws = [response_log_probs(model.logits(**batch, deltas=d), labels) for d in deltas]
            draw_lp.append(torch.stack(draws).double() if draws else mean_lp[-1][None])
    if not mean_lp:
        raise ValueError("token_metrics got an empty loader: there are no held-out responses")
    mean = torch.cat(mean_lp)
    draws = torch.cat(draw_lp, dim=1)
    predictive = draws.logsumexp(0) - math.log(draws.shape[0])
    out = {}
    for mode, log_probs in zip(MODES, (mean, predictive), strict=True):
        nll = float(-log_probs.mean())
        out[mode] = {"nll": nll, "perplexity": math.exp(nll), "num_tokens": int(log_probs.numel())}
    return out
