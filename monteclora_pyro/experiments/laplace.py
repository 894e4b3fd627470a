"""Laplace-LoRA: a post-hoc Laplace approximation around a finished LoRA run's adapter.

:func:`laplace_run` fits laplace-torch's ``N(θ_MAP, (H + λI)⁻¹)`` around a ``lora`` run, H the
Kronecker-factored (``"kron"``) or diagonal (``"diag"``) GGN of its training set without the
carved validation split. θ is μ, B and the head (``subset="adapter"``; the adapters become
PEFT-style ``nn.Linear`` pairs, which KFAC takes) or the last linear layer (``"last_layer"``;
``"auto"`` falls back to it when the adapter cannot be taken). λ minimises the validation NLL of
the predictive, linearised (``"glm"``: logits from ``N(f, J Σ Jᵀ)``) or sampled (``"mc"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import vector_to_parameters

from monteclora_pyro import metrics, runs
from monteclora_pyro.data import load_task, make_collator, make_loader, resolve_task_spec
from monteclora_pyro.models.layer import MonteCLoRALinear
from monteclora_pyro.models.likelihood import ClassEvaluation, Classification, get_likelihood
from monteclora_pyro.runs import Predictions
from monteclora_pyro.training.config import resolve_device
from monteclora_pyro.training.evaluation import load_run, run_datasets, write_evaluation

logger = logging.getLogger(__name__)

LAPLACE_METHOD = "laplace"
SOURCE_METHODS = ("lora",)
HESSIANS = ("kron", "diag")
PREDICTIVES = ("glm", "mc")
SUBSETS = ("adapter", "last_layer", "auto")
PRIOR_PRECISIONS = tuple(float(10.0**k) for k in np.arange(-4.0, 4.5, 0.5))  # 1e-4 .. 1e4


class _AdapterLinear(nn.Module):
    """``base(x) + s · lora_B(lora_A(x))``: a MonteCLoRALinear at A = μ, sharing μ and B."""

    def __init__(self, layer: MonteCLoRALinear):
        super().__init__()
        self.base, self.scaling = layer.base, layer.scaling
        self.lora_A = nn.Linear(layer.in_features, layer.r, bias=False)
        self.lora_B = nn.Linear(layer.r, layer.out_features, bias=False)
        self.lora_A.weight, self.lora_B.weight = layer.lora_A, layer.lora_B

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


class LogitsModel(nn.Module):
    """A LoRA method's network as ``batch -> logits`` (its adapters replaced in place by their
    PEFT layout); only the method's trained parameters (μ, B, the head) require gradients."""

    def __init__(self, method):
        super().__init__()
        for path, layer in method.model.adapters.items():
            method.network.set_submodule(path, _AdapterLinear(layer))
        self.network = method.network
        trained = {id(p) for p in method.params}
        for param in self.network.parameters():
            param.requires_grad_(id(param) in trained)

    def forward(self, batch) -> Tensor:
        device = next(self.network.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        return self.network(**inputs).logits


@dataclass
class LaplaceFit:
    """A fitted approximation (``laplace``, over ``subset``: ``"adapter"`` or ``"last_layer"``),
    the run's unshuffled ``validation`` and ``eval`` batches and its ``TrainConfig``."""

    laplace: object
    subset: str
    batches: dict
    config: object


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is invalid: allowed values are {allowed}")


def fit_run(run_dir: str | Path, hessian: str = "kron", subset: str = "auto") -> LaplaceFit:
    """Fit laplace-torch around the adapter of a finished ``lora`` run, on its training set.

    Raises
    ------
    ValueError
        If the run is not a ``lora`` classifier's with a carved validation split, an option is
        invalid, or ``subset="adapter"`` and laplace-torch cannot take the adapter.
    RuntimeError
        If laplace-torch is not installed (``pip install 'monteclora-pyro[laplace]'``).
    """
    _check("hessian", hessian, HESSIANS)
    _check("subset", subset, SUBSETS)
    config = runs.read_config(run_dir)["train"]
    if config["method"] not in SOURCE_METHODS:
        raise ValueError(
            f"{run_dir} is a {config['method']!r} run: Laplace-LoRA takes a finished run of "
            f"{' or '.join(map(repr, SOURCE_METHODS))} (its adapter is the MAP estimate)"
        )
    likelihood = get_likelihood(resolve_task_spec(config["task"]).likelihood)
    if not isinstance(likelihood, Classification):
        raise ValueError(f"{run_dir} is a {likelihood.name} run: Laplace-LoRA takes a classifier's")
    if runs.read_validation_split(run_dir) is None:
        raise ValueError(
            f"{run_dir} carved no validation split to choose the prior precision on: train it "
            "with --validation-fraction > 0 (TrainConfig.validation_fraction)"
        )
    try:
        from laplace import Laplace
    except ImportError as err:
        message = "post-hoc Laplace needs laplace-torch: pip install 'monteclora-pyro[laplace]'"
        raise RuntimeError(message) from err
    method, tokenizer, cfg = load_run(run_dir)
    method.to(resolve_device(cfg.device))
    task = load_task(cfg.task, cfg.data_dir)
    splits, _, _ = run_datasets(cfg, task, tokenizer)
    collator, size = make_collator(tokenizer, task.spec), cfg.batch_size
    loaders = {k: make_loader(d, collator, size, shuffle=False, seed=0) for k, d in splits.items()}
    batches = {name: list(loaders[name]) for name in ("validation", "eval")}
    model = LogitsModel(method).eval()
    options = {"likelihood": likelihood.name, "hessian_structure": hessian}
    if subset != "last_layer":
        try:
            laplace = Laplace(model, subset_of_weights="all", **options)
            laplace.fit(loaders["train"])
            return LaplaceFit(laplace, "adapter", batches, cfg)
        except NotImplementedError as err:
            if subset == "adapter":
                raise ValueError(
                    f"laplace-torch cannot take the adapter of {run_dir} ({err}): use "
                    "subset='last_layer' or 'auto'"
                ) from err
            logger.warning("laplace-torch cannot take the adapter (%s): last-layer Laplace", err)
    laplace = Laplace(model, subset_of_weights="last_layer", **options)
    laplace.fit(loaders["train"])
    return LaplaceFit(laplace, "last_layer", batches, cfg)


def glm_probability_draws(f_mu: Tensor, f_var: Tensor, noise: Tensor) -> Tensor:
    """``softmax(f_mu + R ε)`` (S, n, C) per standard-normal ε of ``noise`` (S, n, C), float64.

    Each draw is one logit vector of ``N(f_mu, f_var)`` per example: ``R = V diag(√w)`` with
    ``f_var = V diag(w) Vᵀ`` (n, C, C; negative eigenvalues at zero), ``f_mu`` (n, C).
    """
    f_var = f_var.double()
    values, vectors = torch.linalg.eigh((f_var + f_var.mT) / 2)
    root = vectors * values.clamp_min(0).sqrt().unsqueeze(-2)
    logits = f_mu.double() + torch.einsum("nij,snj->sni", root, noise.to(root))
    return torch.softmax(logits, dim=-1)


def predictive_draws(
    laplace,
    batches: list,
    prior_precisions: Sequence[float],
    *,
    predictive: str,
    num_samples: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (n,), MAP probabilities (n, C) and S seeded predictive draws (G, S, n, C) of
    ``batches``, at each of G prior precisions.

    ``"glm"`` draws logits of the linearised predictive per example
    (:func:`glm_probability_draws`), ``"mc"`` S parameter vectors, each used for every batch;
    every prior precision reuses the same standard-normal draws (common random numbers).
    """
    _check("predictive", predictive, PREDICTIVES)
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} is invalid: it must be >= 1")
    backend, draws = laplace.backend, [[] for _ in prior_precisions]
    if predictive == "glm":
        generator = torch.Generator().manual_seed(seed)
        jacobians = backend.last_layer_jacobians if backend.last_layer else backend.jacobians
        for batch in batches:
            js, f_mu = jacobians(batch)
            noise = torch.randn(num_samples, *f_mu.shape, generator=generator, dtype=torch.float64)
            for g, precision in enumerate(prior_precisions):
                laplace.prior_precision = float(precision)
                draws[g].append(glm_probability_draws(f_mu, laplace.functional_variance(js), noise))
        draws = [torch.cat(parts, dim=1) for parts in draws]
    else:
        params = laplace.params
        if backend.last_layer:
            params = list(laplace.model.last_layer.parameters())
        for g, precision in enumerate(prior_precisions):
            laplace.prior_precision = float(precision)
            generator = torch.Generator(device=laplace.mean.device).manual_seed(seed)
            for theta in laplace.sample(num_samples, generator=generator):
                vector_to_parameters(theta, params)
                draws[g].append(_probabilities(laplace.model, batches))
            vector_to_parameters(laplace.mean, params)
        draws = [torch.stack(parts) for parts in draws]
    labels = np.concatenate([b["labels"].numpy() for b in batches])
    plug_in = _probabilities(laplace.model, batches).cpu().numpy()
    return labels, plug_in, torch.stack(draws).cpu().numpy()


@torch.no_grad()
def _probabilities(model: nn.Module, batches: list) -> Tensor:
    return torch.cat([torch.softmax(model(b).double(), dim=-1) for b in batches])


def laplace_run(
    run_dir: str | Path,
    output_dir: str | Path,
    *,
    hessian: str = "kron",
    prior_precisions: Sequence[float] = PRIOR_PRECISIONS,
    num_samples: int | None = None,
    predictive: str = "glm",
    subset: str = "auto",
) -> dict:
    """Fit Laplace-LoRA to a finished ``lora`` run; write the result to ``output_dir``.

    Parameters
    ----------
    run_dir, output_dir : str or Path
        A finished ``lora`` run trained with ``--validation-fraction > 0``, and the new run.
    hessian, predictive, subset : str
        See the module docstring; ``subset="auto"`` records which ran as ``laplace_subset``.
    prior_precisions : sequence of float
        The grid of λ searched on the validation split (default 1e-4 .. 1e4, half decades).
    num_samples : int, optional
        S, the predictive draws (default: the run's ``num_samples``), seeded by the run's seed.

    Returns
    -------
    dict
        The run's metrics (also in ``metrics.json``), with ``source``, ``source_method``,
        ``laplace_subset``, ``hessian``, ``predictive``, ``prior_precision`` (the chosen λ) and
        ``validation_nll_by_prior_precision``; the validation split's predictions and metrics
        go to ``evaluations/{task}-train-validation/``.

    Raises
    ------
    ValueError, RuntimeError
        As :func:`fit_run`, or for an invalid option.
    FileExistsError
        If ``output_dir`` already holds a run.
    """
    _check("predictive", predictive, PREDICTIVES)
    grid = [float(p) for p in prior_precisions]
    if not grid or not all(p > 0 for p in grid):
        raise ValueError(f"prior_precisions={prior_precisions!r} must be non-empty and positive")
    run_dir, out = Path(run_dir), Path(output_dir)
    runs.refuse_existing(out)
    fit = fit_run(run_dir, hessian, subset)
    cfg, source = fit.config, runs.read_metrics(run_dir)
    samples = cfg.num_samples if num_samples is None else num_samples
    draws = {"num_samples": samples, "seed": cfg.seed}
    labels, val_plug_in, val_draws = predictive_draws(
        fit.laplace, fit.batches["validation"], grid, predictive=predictive, **draws
    )
    nlls = [metrics.nll(d.mean(0), labels) for d in val_draws]
    best = int(np.argmin(nlls))
    logger.info("prior precision %g: validation NLL %.4f", grid[best], nlls[best])
    spec = resolve_task_spec(cfg.task)
    validation = ClassEvaluation(Predictions(labels, val_plug_in, val_draws[best]))
    eval_labels, plug_in, eval_draws = predictive_draws(
        fit.laplace, fit.batches["eval"], [grid[best]], predictive=predictive, **draws
    )
    if not np.array_equal(eval_labels, runs.read_predictions(run_dir).labels):
        raise ValueError(f"the evaluation split of {run_dir} is not the one it was evaluated on")
    evaluation = ClassEvaluation(Predictions(eval_labels, plug_in, eval_draws[0]))
    report = {
        "task": source["task"],
        "split": source["split"],
        "method": LAPLACE_METHOD,
        "num_examples": len(eval_labels),
        "num_train_examples": fit.laplace.n_data,
        "num_samples": evaluation.num_draws,
        "source": str(run_dir),
        "source_method": source["method"],
        "laplace_subset": fit.subset,
        "hessian": hessian,
        "predictive": predictive,
        "prior_precision": grid[best],
        "validation_nll_by_prior_precision": {str(p): v for p, v in zip(grid, nlls, strict=True)},
        **evaluation.metrics(spec.metrics),
    }
    out.mkdir(parents=True, exist_ok=True)
    config = runs.read_config(run_dir)
    train = {**config["train"], "method": LAPLACE_METHOD, "output_dir": str(out)}
    runs.write_config(out, {**train, "num_samples": evaluation.num_draws}, config["monteclora"])
    write_evaluation(out, validation, spec, runs.VALIDATION_SPLIT, LAPLACE_METHOD, len(labels))
    evaluation.save(out)
    runs.write_metrics(out, report)
    return report
