"""MonteCLoRA through the Hugging Face ``transformers.Trainer``.

:class:`MonteCLoRATrainer` trains a :class:`~monteclora_pyro.models.MonteCLoRAModel` and its
guide (MonteCLoRA's, or LoRA's pinned guide; any objective) from the user's own
``TrainingArguments``, datasets, collator and callbacks:

- the loss is the method's (:meth:`~monteclora_pyro.training.base.Method.loss`): the negative
  ELBO of :func:`~monteclora_pyro.infer.elbo_terms` per training example, with one guide draw
  per step; its named terms are logged with the loss (averaged over the logging window), and
  ``guide_learning_rate`` with ``learning_rate``;
- the optimizer is the one ``TrainingArguments.optim`` names, over μ, B and the head (weight
  decay as the Trainer applies it) and, in a parameter group of their own, the variational
  parameters at ``guide_lr`` (no weight decay), on the same schedule;
- ``guide_delay_ratio``, ``guide_lr_restart`` and ``freeze_adapter_after_delay`` train in
  phases as :class:`~monteclora_pyro.training.TrainConfig`'s fields of those names do (the
  linear schedule only), e.g. ``MonteCLoRATrainer(..., **two_phase)`` with ``two_phase`` the
  options of :func:`~monteclora_pyro.training.two_phase_training` other than ``epochs``;
- a guide trains alone around a finished LoRA run (the ``uncertainty`` preset, for
  :meth:`MonteCLoRAConfig.uncertainty`) once the run's adapter is loaded into the model and
  frozen (:func:`~monteclora_pyro.training.from_run.load_run_adapter`): frozen parameters stay
  out of the optimizer; take ``guide_lr`` and the epochs from
  ``preset_training("uncertainty")``;
- :meth:`~MonteCLoRATrainer.evaluate` reports both prediction modes, the posterior mean and the
  posterior predictive over S guide draws (:func:`~monteclora_pyro.training.evaluate`), as
  ``eval_posterior_mean_accuracy``, ``eval_posterior_predictive_nll``, ...; ``eval_loss`` is the
  posterior predictive NLL (what ``metric_for_best_model="loss"`` compares);
- :meth:`~transformers.Trainer.save_model` and every checkpoint write our adapter files
  (:func:`~monteclora_pyro.io.save_adapter`: ``monteclora_config.json``,
  ``adapter_meta.json``, ``adapter_model.safetensors``, ``guide_params.safetensors``), which
  ``train(resume_from_checkpoint=...)`` and ``load_best_model_at_end`` read back, and which
  :func:`~monteclora_pyro.io.load_adapter` loads.

Why a subclass, not a mixin plus a callback: a ``TrainerCallback`` only observes events and
sets ``TrainerControl`` flags; it cannot change the loss, the optimizer's parameter groups,
what a checkpoint holds or what ``evaluate`` returns, which are exactly the four things that
differ here. Those are the Trainer's documented override points (``compute_loss``,
``create_optimizer``, ``evaluate``, ``_save``/``_load_from_checkpoint``), so they are
overridden in one class that users import in place of ``Trainer``; a mixin would have to be
combined with ``Trainer`` by every user, in the right order, for the same overrides.

Training runs through ``accelerate`` as the Trainer does (one process per device with
``torchrun``/``accelerate launch``: the model and guide are one module, so DDP averages the
variational gradients too). ``torch.nn.DataParallel`` (several GPUs in one process),
DeepSpeed and FSDP are not supported. Evaluation runs over the whole evaluation set in every
process.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import SchedulerType, speed_metrics

from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.guides import MonteCLoRAGuide
from monteclora_pyro.io import ADAPTER_FILE, GUIDE_FILE, read_meta, read_tensors, save_adapter
from monteclora_pyro.models import MonteCLoRAModel
from monteclora_pyro.models.params import restore_parameters
from monteclora_pyro.training.config import delay_steps, phase_problem
from monteclora_pyro.training.evaluation import evaluate
from monteclora_pyro.training.methods import LoRAMethod, MonteCLoRAMethod, PyroMethod
from monteclora_pyro.training.optim import Phases, held_parameters, kl_factor, phase_schedules

logger = logging.getLogger(__name__)

TRAINING_ARGS_FILE = "training_args.bin"
GUIDE_GROUP = "guide"  # the ``name`` of the variational parameters' optimizer group
# Inputs a likelihood reads besides the backbone's (multiple choice).
EXTRA_INPUTS = ("answer_mask", "choice_mask")
METHODS_BY_GUIDE: tuple[type[PyroMethod], ...] = (MonteCLoRAMethod, LoRAMethod)


class MonteCLoRAModule(nn.Module):
    """A MonteCLoRA model and its guide as one module whose forward is the training loss.

    What the Trainer places on the device, wraps for data parallelism and trains.

    Parameters
    ----------
    method : PyroMethod
        The model and guide, and the loss.
    """

    def __init__(self, method: PyroMethod):
        super().__init__()
        self.bayes = method.model
        self.guide = method.guide
        self._method = (method,)  # not a submodule: its modules are the two above

    @property
    def method(self) -> PyroMethod:
        return self._method[0]

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss`` (per training example) and its named terms, for a batch with ``labels``."""
        loss, terms = self.method.loss(batch)
        return {"loss": loss, **terms}


class MonteCLoRATrainer(Trainer):
    """``transformers.Trainer`` for a MonteCLoRA model and guide (see the module docstring).

    Parameters
    ----------
    model : MonteCLoRAModel
        The Pyro model around the user's Hugging Face model; its ``num_data`` should be the
        size of ``train_dataset``.
    guide : nn.Module, optional
        :class:`~monteclora_pyro.MonteCLoRAGuide` (the default, built from ``model``) or
        :class:`~monteclora_pyro.LoRAGuide`.
    args : TrainingArguments, optional
        As for ``Trainer``; ``learning_rate`` is the model's.
    guide_lr : float, optional
        Peak learning rate of the variational parameters (default: ``args.learning_rate``).
    guide_delay_ratio : float
        In [0, 1): the fraction of the steps trained with the KL terms off and the guide held.
    guide_lr_restart : bool
        Run the guide's schedule over the steps after the delay.
    freeze_adapter_after_delay : bool
        Run the adapter's schedule over the delay's steps, then hold the adapter.
    num_samples : int
        Guide draws S of the posterior predictive at evaluation.
    task_metrics : tuple of str
        Extra metrics to report, e.g. ``("mcc",)`` or ``("f1",)``.
    **kwargs
        Every other ``Trainer`` argument (``train_dataset``, ``eval_dataset``,
        ``data_collator``, ``processing_class``, ``callbacks``, ...), except ``model_init``,
        ``optimizers``, ``compute_loss_func`` and ``compute_metrics``, which this trainer
        defines.
    """

    loss_is_scaled_for_ga = False  # the loss is per example: the Trainer divides by GA steps

    def __init__(
        self,
        model: MonteCLoRAModel,
        guide: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *,
        guide_lr: float | None = None,
        guide_delay_ratio: float = 0.0,
        guide_lr_restart: bool = False,
        freeze_adapter_after_delay: bool = False,
        num_samples: int = 16,
        task_metrics: tuple[str, ...] = (),
        **kwargs: Any,
    ):
        if not isinstance(model, MonteCLoRAModel):
            raise TypeError(
                f"MonteCLoRATrainer trains a MonteCLoRAModel, got {type(model).__name__}: wrap "
                "the Hugging Face model first, MonteCLoRAModel(hf_model, config, num_data=N)"
            )
        for name in ("model_init", "optimizers", "compute_loss_func", "compute_metrics"):
            if kwargs.get(name) not in (None, (None, None)):
                raise ValueError(f"MonteCLoRATrainer defines {name} itself; leave it out")
        if guide_lr is not None and not guide_lr > 0:
            raise ValueError(f"guide_lr={guide_lr!r} is invalid: it must be > 0, or None")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r} is invalid: it must be an integer >= 1")
        phases = {
            "guide_delay_ratio": guide_delay_ratio,
            "guide_lr_restart": guide_lr_restart,
            "freeze_adapter_after_delay": freeze_adapter_after_delay,
        }
        if problem := phase_problem(*phases.values()):
            name, why = problem
            raise ValueError(f"{name}={phases[name]!r} is invalid: {why}")
        guide = MonteCLoRAGuide(model) if guide is None else guide
        self.method = _method_class(guide, model.config).from_parts(model, guide)
        self.guide_delay_ratio = guide_delay_ratio
        self.phases = Phases(0.0, guide_lr_restart, freeze_adapter_after_delay)
        self.guide_delay = 0  # in steps, once the scheduler knows how many there are
        self.variational_ids = {id(p) for p in self.method.variational_parameters().values()}
        if guide_delay_ratio and not self.variational_ids:
            raise ValueError(
                f"guide_delay_ratio={guide_delay_ratio} holds a guide's variational "
                f"parameters, and {type(guide).__name__} has none"
            )
        self.guide_lr = guide_lr
        self.num_samples = num_samples
        self.task_metrics = tuple(task_metrics)
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_count = 0
        super().__init__(model=MonteCLoRAModule(self.method), args=args, **kwargs)
        if guide_delay_ratio and self.args.lr_scheduler_type != SchedulerType.LINEAR:
            raise ValueError(
                f"guide_delay_ratio={guide_delay_ratio} runs linear schedules over the phases, and "
                f"args.lr_scheduler_type is {self.args.lr_scheduler_type.value!r}: set it to "
                "'linear'"
            )
        if self.args.n_gpu > 1:
            raise ValueError(
                f"{self.args.n_gpu} GPUs in one process (torch.nn.DataParallel) are not supported: "
                "launch one process per GPU with torchrun or accelerate launch"
            )
        self.model_accepts_loss_kwargs = False
        self.label_names = ["labels"]
        self._signature_columns = _input_columns(model)
        train = kwargs.get("train_dataset")
        if hasattr(train, "__len__") and len(train) != model.num_data:
            logger.warning(
                "the MonteCLoRAModel was built with num_data=%d, but train_dataset has %d "
                "examples: the likelihood is scaled to num_data",
                model.num_data,
                len(train),
            )

    @property
    def bayes(self) -> MonteCLoRAModel:
        """The trained :class:`MonteCLoRAModel`."""
        return self.method.model

    @property
    def guide(self) -> nn.Module:
        """The trained guide."""
        return self.method.guide

    # ---- optimisation ----------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The ``args.optim`` optimizer with the variational parameters in their own group."""
        if self.optimizer is None:
            decay = set(self.get_decay_parameter_names(self.bayes))
            named = [(n, p) for n, p in self.bayes.named_parameters() if p.requires_grad]
            groups = [
                {
                    "params": [p for n, p in named if n in decay],
                    "weight_decay": self.args.weight_decay,
                },
                {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
            ]
            variational = list(self.method.variational_parameters().values())
            if variational:
                lr = self.guide_lr if self.guide_lr is not None else self.args.learning_rate
                groups.append(
                    {"params": variational, "weight_decay": 0.0, "lr": lr, "name": GUIDE_GROUP}
                )
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            else:
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(
                    self.args, self.model
                )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The Trainer's schedule, or with ``guide_delay_ratio`` the linear schedules of the
        phases (:func:`~monteclora_pyro.training.optim.phase_schedules`)."""
        if not self.guide_delay_ratio or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        self.guide_delay = delay_steps(self.guide_delay_ratio, num_training_steps)
        warmup = self.args.get_warmup_steps(num_training_steps) / num_training_steps
        phases = dataclasses.replace(self.phases, warmup_ratio=warmup)
        adapter, guide = phase_schedules(phases, num_training_steps, self.guide_delay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            [guide if g.get("name") == GUIDE_GROUP else adapter for g in optimizer.param_groups],
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch: Any = None):
        """The Trainer's step, with the KL terms off and the held parameters' gradients dropped
        in the phases of ``guide_delay_ratio``."""
        if not self.guide_delay_ratio:
            return super().training_step(model, inputs, num_items_in_batch)
        step = self.state.global_step
        self.method.set_kl_factor(kl_factor(step, self.guide_delay, 0))
        loss = super().training_step(model, inputs, num_items_in_batch)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        held = held_parameters(self.phases, step, self.guide_delay, params, self.variational_ids)
        for param in held:
            param.grad = None
        return loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ):
        """The method's loss of a batch (negative ELBO per training example, one guide draw)."""
        outputs = model(**inputs)
        if model.training:
            for name, value in outputs.items():
                if name != "loss":
                    self._term_sums[name] = self._term_sums.get(name, 0.0) + value.detach()
            self._term_count += 1
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the loss terms (averaged since the last log) and the guide's learning rate."""
        if "loss" in logs and self._term_count:
            logs = dict(logs)
            for name, total in self._term_sums.items():
                logs[name] = float(total / self._term_count)
            self._term_sums, self._term_count = {}, 0
            rate = self.guide_learning_rate()
            if rate is not None:
                logs["guide_learning_rate"] = rate
        super().log(logs, start_time)

    def guide_learning_rate(self) -> float | None:
        """The current learning rate of the variational parameters (None without a group)."""
        if self.optimizer is None or self.lr_scheduler is None:
            return None
        rates = self.lr_scheduler.get_last_lr()
        for group, rate in zip(self.optimizer.param_groups, rates, strict=False):
            if group.get("name") == GUIDE_GROUP:
                return float(rate)
        return None

    # ---- evaluation ------------------------------------------------------------------

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Both prediction modes over the evaluation set, S = ``num_samples`` guide draws.

        Returns
        -------
        dict
            ``{prefix}_{mode}_{metric}`` for ``mode`` in ``posterior_mean`` and
            ``posterior_predictive`` and every metric of the likelihood (accuracy, NLL, ECE,
            Brier, ... for classes), ``{prefix}_loss`` (the posterior predictive NLL),
            ``{prefix}_num_samples`` and the Trainer's speed figures. A dict of datasets is
            evaluated one by one, prefixed ``{prefix}_{name}``.
        """
        override = eval_dataset is not None
        dataset = eval_dataset if override else self.eval_dataset
        if isinstance(dataset, dict):
            metrics = {}
            for name, part in dataset.items():
                prefix = f"{metric_key_prefix}_{name}"
                metrics.update(self.evaluate(part, ignore_keys, prefix))
            return metrics
        if dataset is None:
            raise ValueError("MonteCLoRATrainer.evaluate needs an eval_dataset")
        start = time.time()
        result = evaluate(
            self.method,
            self.bayes.likelihood,
            self._evaluation_loader(dataset),
            self.num_samples,
            self.args.seed,
        )
        modes = result.metrics(self.task_metrics)
        metrics = {
            f"{metric_key_prefix}_{mode}_{name}": value
            for mode, values in modes.items()
            for name, value in values.items()
        }
        if "nll" in modes.get("posterior_predictive", {}):
            metrics[f"{metric_key_prefix}_loss"] = modes["posterior_predictive"]["nll"]
        metrics[f"{metric_key_prefix}_num_samples"] = result.num_draws
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=len(dataset)))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        return metrics

    def _evaluation_loader(self, dataset) -> DataLoader:
        """The whole evaluation set in order, unsharded (every process evaluates all of it)."""
        collator = self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="evaluation")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="evaluation")
        return DataLoader(
            dataset,
            batch_size=self.args.eval_batch_size,
            collate_fn=collator,
            shuffle=False,
            num_workers=self.args.dataloader_num_workers,
        )

    def predict(self, *args: Any, **kwargs: Any):
        """Not provided: use :meth:`evaluate`, or the class probabilities of both modes from
        :func:`monteclora_pyro.training.predict` (``trainer.bayes``, ``trainer.guide``)."""
        raise NotImplementedError(
            "MonteCLoRATrainer.predict is not provided: use trainer.evaluate(dataset) for "
            "metrics, or monteclora_pyro.training.predict(trainer.bayes, trainer.guide, loader, "
            "num_samples) for the posterior-mean and per-draw class probabilities"
        )

    # ---- saving and loading ------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the adapter files (and the tokenizer and training arguments) on rank 0."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        save_adapter(output_dir, self.bayes, self.guide)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None):
        """Restore μ, B, the head and the variational parameters from a checkpoint."""
        restore_adapter(resume_from_checkpoint, self.bayes, self.guide)

    def _load_best_model(self) -> None:
        restore_adapter(self.state.best_model_checkpoint, self.bayes, self.guide)


def restore_adapter(directory: str | Path, model: MonteCLoRAModel, guide: nn.Module) -> None:
    """Copy the parameters saved by :func:`~monteclora_pyro.io.save_adapter` into ``model``
    and ``guide`` in place, refusing an adapter of another configuration or architecture."""
    directory = Path(directory)
    saved = MonteCLoRAConfig.load(directory)
    if saved != model.config:
        raise ValueError(f"{directory} holds an adapter of another MonteCLoRAConfig: {saved}")
    meta = read_meta(directory)
    if meta["target_paths"] != list(model.adapters):
        raise ValueError(
            f"{directory} adapts {meta['target_paths']}, this model {list(model.adapters)}"
        )
    restore_parameters(
        model.trainable_parameters(), read_tensors(directory / ADAPTER_FILE), directory
    )
    variational = dict(guide.named_variational_parameters())
    if variational:
        restore_parameters(variational, read_tensors(directory / GUIDE_FILE), directory)


def _method_class(guide: nn.Module, config: MonteCLoRAConfig) -> type[PyroMethod]:
    """The method of ``guide`` (``"monteclora"`` or ``"lora"``), checked against the objective."""
    method = next((m for m in METHODS_BY_GUIDE if type(guide) is m.guide_class), None)
    if method is None:
        guides = [m.guide_class.__name__ for m in METHODS_BY_GUIDE]
        raise TypeError(f"guide must be one of {guides}, got {type(guide).__name__}")
    if method.objectives is not None and config.objective not in method.objectives:
        raise ValueError(
            f"{type(guide).__name__} (method {method.name!r}) runs objective "
            f"{' or '.join(map(repr, method.objectives))}, not {config.objective!r}"
        )
    return method


def _input_columns(model: MonteCLoRAModel) -> list[str]:
    """The dataset columns the Trainer keeps: the backbone's inputs, the likelihood's, labels."""
    names = list(inspect.signature(model.hf_model.forward).parameters)
    return [*names, *EXTRA_INPUTS, "label", "label_ids", "labels"]
