"""Evaluation: one pass of a method over a loader, and the evaluation of a finished run.

The training loop and :func:`evaluate_run` share :func:`evaluate`: the method gives the scores
of the plug-in prediction and of its S draws (taken once, from their own seeded stream, so
draw s is one set of adapter weights for the whole set), and the likelihood turns them into
predictions and metrics (docs/design.md §5).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from monteclora_pyro import runs
from monteclora_pyro.backbones import load_backbone
from monteclora_pyro.data import (
    load_task,
    make_collator,
    make_loader,
    resolve_task_spec,
    take_first,
    tokenize_task,
)
from monteclora_pyro.models import MonteCLoRAModel
from monteclora_pyro.models.evaluations import TokenAccumulator
from monteclora_pyro.models.likelihood import (
    ClassEvaluation,
    Likelihood,
    TokenEvaluation,
    get_likelihood,
)
from monteclora_pyro.runs import Predictions
from monteclora_pyro.training.base import Method
from monteclora_pyro.training.config import TrainConfig, load_run_config
from monteclora_pyro.training.methods import METHODS, PyroMethod

logger = logging.getLogger(__name__)

Evaluation = ClassEvaluation | TokenEvaluation


@contextmanager
def evaluating(module: nn.Module) -> Iterator[torch.device]:
    """Put ``module`` in eval mode (no dropout) and yield its device; restore the mode after."""
    was_training = module.training
    module.eval()
    try:
        yield next(module.parameters()).device  # a GPU in data-parallel runs
    finally:
        module.train(was_training)


@torch.no_grad()
def evaluate(
    method: Method,
    likelihood: Likelihood,
    loader: DataLoader,
    num_samples: int,
    seed: int,
    progress: bool = False,
) -> Evaluation:
    """Both prediction modes of ``method`` over ``loader`` (S = ``num_samples`` draws)."""
    draws = method.draws(num_samples, seed)
    accumulator = likelihood.evaluation()
    with evaluating(method.network) as device:
        for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
            batch = dict(batch)
            labels = batch.pop("labels")
            batch = {k: v.to(device) for k, v in batch.items()}
            mean = method.scores(batch)
            accumulator.add(labels, mean, [method.scores(batch, d) for d in draws])
    return accumulator.result()


def _scores_tokens(model: MonteCLoRAModel) -> bool:
    """Whether the model's evaluations are per-token (a next-token likelihood)."""
    return isinstance(model.likelihood.evaluation(), TokenAccumulator)


def _evaluate_parts(model: MonteCLoRAModel, guide: nn.Module, *args) -> Evaluation:
    return evaluate(PyroMethod.from_parts(model, guide), model.likelihood, *args)


def predict(
    model: MonteCLoRAModel,
    guide: nn.Module,
    loader: DataLoader,
    num_samples: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> Predictions:
    """Plug-in and per-draw predictions of a model and guide over ``loader``.

    Class probabilities (:class:`~monteclora_pyro.runs.Predictions`) for classification and
    multiple choice, Normal means and precisions for regression; a next-token model has
    none (use :func:`token_metrics`).
    """
    if _scores_tokens(model):
        raise ValueError("a next_token model has no per-example predictions: use token_metrics")
    return _evaluate_parts(model, guide, loader, num_samples, seed, progress).predictions


def token_metrics(
    model: MonteCLoRAModel,
    guide: nn.Module,
    loader: DataLoader,
    num_samples: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Per-token NLL and perplexity of held-out responses, for a next-token model.

    Only response tokens count (``labels != -100``). The posterior predictive averages each
    token's probability over S guide draws (a LoRA guide has none: both modes agree).

    Returns
    -------
    dict
        ``{"posterior_mean": {...}, "posterior_predictive": {...}}``, each with ``nll`` (mean
        over tokens, natural log), ``perplexity`` (``exp(nll)``) and ``num_tokens``.
    """
    if not _scores_tokens(model):
        raise ValueError("token_metrics needs a MonteCLoRAModel with likelihood='next_token'")
    return _evaluate_parts(model, guide, loader, num_samples, seed, progress).metrics()


def load_run(run_dir: str | Path) -> tuple[Method, object, TrainConfig]:
    """The trained method, the tokenizer and the training configuration of a finished run."""
    run_dir = Path(run_dir)
    train_cfg, _ = load_run_config(run_dir)
    spec = resolve_task_spec(train_cfg.task)
    likelihood = get_likelihood(spec.likelihood)
    hf_model, tokenizer, _ = load_backbone(
        train_cfg.model, spec.num_labels, spec.label_names, causal=likelihood.causal
    )
    method = METHODS[train_cfg.method].load(run_dir, hf_model, likelihood)
    return method, tokenizer, train_cfg


def evaluate_run(
    run_dir: str | Path,
    task: str | None = None,
    split: str | None = None,
    *,
    data_dir: str | None = None,
    num_samples: int | None = None,
    max_examples: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate a finished run, on its own evaluation split or another task or split.

    Writes ``metrics.json`` (and ``predictions.npz`` for class probabilities) under
    ``RUN_DIR/evaluations/{task}-{split}/`` and returns the metrics: those of the task's
    likelihood, e.g. per-token ``nll``, ``perplexity`` and ``num_tokens`` for next-token tasks.

    Raises
    ------
    ValueError
        If the task has another likelihood than the run's, another number of labels, or lacks
        the split.
    """
    run_dir = Path(run_dir)
    cfg, _ = load_run_config(run_dir)
    task_name = task or cfg.task
    spec = resolve_task_spec(task_name)
    trained = resolve_task_spec(cfg.task)
    if spec.likelihood != trained.likelihood:
        raise ValueError(
            f"task {spec.name} is a {spec.likelihood} task, but the run in {run_dir} was "
            f"trained on {trained.name}, a {trained.likelihood} task: evaluate it on a "
            f"{trained.likelihood} task"
        )
    if spec.num_labels != trained.num_labels:
        raise ValueError(
            f"task {spec.name} has {spec.num_labels} labels {list(spec.label_names)}, but the "
            f"run in {run_dir} was trained on {cfg.task} with {trained.num_labels}"
        )
    if spec.label_names != trained.label_names:
        logger.warning(
            "label names differ: %s (run) vs %s (%s); ids are matched by position",
            trained.label_names,
            spec.label_names,
            spec.name,
        )
    loaded = load_task(task_name, data_dir if data_dir is not None else cfg.data_dir)
    split = split or (
        cfg.eval_split
        if cfg.eval_split in loaded.splits
        else next(s for s in ("validation", "test", "train") if s in loaded.splits)
    )
    if split not in loaded.splits:
        raise ValueError(f"task {spec.name} has no split {split!r}; it has {sorted(loaded.splits)}")
    method, tokenizer, cfg = load_run(run_dir)
    raw = first_examples(loaded.splits[split], max_examples)
    dataset = tokenize_task(
        dataclasses.replace(loaded, splits={split: raw}), tokenizer, cfg.max_length
    )[split]
    loader = make_loader(
        dataset, make_collator(tokenizer, spec), batch_size or cfg.batch_size, shuffle=False, seed=0
    )
    likelihood = get_likelihood(spec.likelihood)
    result = evaluate(
        method, likelihood, loader, num_samples or cfg.num_samples, cfg.seed, progress
    )
    return write_evaluation(run_dir, result, spec, split, cfg.method, len(dataset))


def write_evaluation(
    run_dir: str | Path, result: Evaluation, spec, split: str, method: str, num_examples: int
) -> dict:
    """Write an evaluation's files and ``metrics.json`` under ``evaluations/{task}-{split}/``."""
    metrics = {
        "task": spec.name,
        "split": split,
        "method": method,
        "num_examples": num_examples,
        "num_samples": result.num_draws,
        **result.metrics(spec.metrics),
    }
    out = runs.evaluation_dir(run_dir, spec.name, split)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out)
    runs.write_metrics(out, metrics)
    return metrics


def carve_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The kept and the held-out indices of ``n`` training examples, each sorted.

    ``ceil(fraction * n)`` indices are held out, the first of a permutation drawn with
    ``numpy.random.default_rng(seed)``: the same seed gives the same split.
    """
    held = np.sort(np.random.default_rng(seed).permutation(n)[: math.ceil(fraction * n)])
    return np.setdiff1d(np.arange(n), held), held


def first_examples(dataset, n: int | None):
    """The first ``n`` examples of ``dataset`` (all of them when ``n`` is None)."""
    return dataset if n is None else take_first(dataset, n)


def run_datasets(config: TrainConfig, task, tokenizer) -> tuple[dict, np.ndarray, int]:
    """The tokenized splits of a run: ``train``, ``eval`` and (when carved) ``validation``.

    The validation split is carved (:func:`carve_validation`) from the first
    ``max_train_examples`` training examples, before training.

    Returns
    -------
    tuple
        The splits by name, the held-out indices and the number of examples carved from.
    """
    pool = first_examples(task.splits["train"], config.max_train_examples)
    kept, held = carve_validation(len(pool), config.validation_fraction, config.seed)
    needed = {
        "train": pool,
        "eval": first_examples(task.splits[config.eval_split], config.max_eval_examples),
    }
    if len(held):
        if not len(kept):
            raise ValueError(f"validation_fraction leaves no training example of {len(pool)}")
        needed["train"] = pool.select(kept)
        needed["validation"] = pool.select(held)
    splits = tokenize_task(dataclasses.replace(task, splits=needed), tokenizer, config.max_length)
    return splits, held, len(pool)
