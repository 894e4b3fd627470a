"""The training loop: one run from data to checkpoints, evaluation and run directory."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from monteclora_pyro import runs
from monteclora_pyro.backbones import load_backbone
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.data import load_task, make_collator, make_loader
from monteclora_pyro.files import atomic_write
from monteclora_pyro.models.likelihood import get_likelihood
from monteclora_pyro.training import convergence, distributed
from monteclora_pyro.training.config import (
    TrainConfig,
    config_differences,
    delay_steps,
    resolve_device,
    save_run_config,
)
from monteclora_pyro.training.evaluation import (
    Evaluation,
    evaluate,
    run_datasets,
    write_evaluation,
)
from monteclora_pyro.training.from_run import check_same_data, post_hoc_config
from monteclora_pyro.training.methods import METHODS
from monteclora_pyro.training.optim import held_parameters, kl_factor, lr_schedules, make_optimizer
from monteclora_pyro.training.tracking import Tracker, make_tracker

logger = logging.getLogger(__name__)


_NOT_SCALARS = ("kind", "step", "epoch")


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the last good checkpoint is kept."""


class Trainer:
    """One fine-tuning run: data, method, optimiser, checkpoints and evaluation.

    Every method (:data:`~monteclora_pyro.training.methods.METHODS`) and every likelihood
    (the task's) runs the same loop; it uses the method only through
    :class:`~monteclora_pyro.training.base.Method`. With ``report_to`` set, rank 0 also sends
    the loss terms, learning rates, evaluations and convergence figures to a
    :class:`~monteclora_pyro.training.tracking.Tracker`.
    """

    def __init__(
        self,
        config: TrainConfig,
        model_config: MonteCLoRAConfig | None = None,
        *,
        progress: bool = True,
    ):
        self.cfg = config
        # Several processes (accelerate launch / torchrun): see monteclora_pyro.distributed.
        self.parallel = distributed.from_environment(config.seed)
        self.is_main = self.parallel is None or self.parallel.is_main
        self.progress = progress and self.is_main
        self.run_dir = Path(config.output_dir)
        pyro.set_rng_seed(config.seed)
        task = load_task(config.task, config.data_dir)
        self.spec = task.spec
        if config.eval_split not in task.splits:
            raise ValueError(
                f"task {self.spec.name} has no split {config.eval_split!r}; "
                f"it has {sorted(task.splits)}"
            )
        if "train" not in task.splits:
            raise ValueError(
                f"task {self.spec.name} has no training split; it can only be used for evaluation"
            )
        self.likelihood = get_likelihood(self.spec.likelihood)
        causal = self.likelihood.causal
        hf_model, self.tokenizer, new_modules = load_backbone(
            config.model, self.spec.num_labels, self.spec.label_names, causal=causal
        )
        model_config = MonteCLoRAConfig() if model_config is None else model_config
        model_config = post_hoc_config(config, hf_model, model_config, new_modules)
        heads = self.likelihood.default_heads(hf_model)
        if model_config.modules_to_save is None and heads:
            extra = [
                m for m in new_modules if not any(m == h or m.startswith(h + ".") for h in heads)
            ]
            if extra:
                logger.warning("training newly initialised modules %s as well", extra)
            model_config = dataclasses.replace(model_config, modules_to_save=heads + extra)
        allowed = METHODS[config.method].objectives
        if allowed is not None and model_config.objective not in allowed:
            raise ValueError(
                f"method {config.method!r} runs objective {' or '.join(map(repr, allowed))}, not "
                f"{model_config.objective!r}"
            )
        self.model_cfg = model_config
        tokenized, self.validation_indices, self.num_pool = run_datasets(
            config, task, self.tokenizer
        )
        check_same_data(config, self.validation_indices, self.num_pool)
        self.collator = make_collator(self.tokenizer, self.spec)
        self.train_set, self.eval_set = tokenized["train"], tokenized["eval"]
        self.validation_set = tokenized.get("validation")
        self.method = METHODS[config.method](
            hf_model,
            model_config,
            num_data=len(self.train_set),
            likelihood=self.likelihood,
            from_peft=config.from_peft,
            from_run=config.from_run,
        )
        self.device = (
            resolve_device(config.device) if self.parallel is None else self.parallel.device
        )
        self.method.to(self.device)
        self.params = self.method.params
        self.variational = self.method.variational_parameters()
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        self.total_steps = config.total_steps(self.steps_per_epoch)
        self.variational_ids = {id(p) for p in self.variational.values()}
        self.optimizer = make_optimizer(self.params, self.variational_ids, config)
        self.guide_delay = delay_steps(config.guide_delay_ratio, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_schedules(
                config, self.total_steps, self.guide_delay, len(self.optimizer.param_groups)
            ),
        )
        if config.guide_delay_ratio and not self.variational:
            raise ValueError(
                f"guide_delay_ratio={config.guide_delay_ratio} holds a guide's variational "
                f"parameters, and method {config.method!r} has none"
            )
        self.step = 0
        self._set_kl_factor()  # fails here for a method without KL terms
        self.window = convergence.Window(self.variational, step=0)  # of the convergence record
        self.evaluation: Evaluation | None = None  # the last evaluation
        self.eval_metrics: dict | None = None  # of the last evaluation
        self.eval_seconds: float | None = None  # its wall time
        self.train_seconds = 0.0  # wall time of the training steps, over resumes
        self.tracker: Tracker | None = None  # rank 0, while train() runs

    def _set_kl_factor(self) -> None:
        """Weigh the KL terms of the next step (``guide_delay_ratio``, ``kl_warmup_steps``)."""
        if self.guide_delay or self.cfg.kl_warmup_steps:
            self.method.set_kl_factor(
                kl_factor(self.step, self.guide_delay, self.cfg.kl_warmup_steps)
            )

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / runs.CHECKPOINT_FILE

    def prepare_run_dir(self, resume: bool) -> None:
        """Create the run directory, or restore its checkpoint when resuming."""
        if resume and self.checkpoint_path.is_file():
            self.load_checkpoint()
            return
        if resume:
            logger.warning("no checkpoint in %s: starting from scratch", self.run_dir)
        elif runs.is_run(self.run_dir):
            raise FileExistsError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose "
                "another --output-dir (nothing was overwritten)"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        runs.prune_epoch_dirs(self.run_dir, 0)  # those of an earlier run in this directory
        runs.start_history(self.run_dir)
        if self.validation_set is not None:
            runs.write_validation_split(self.run_dir, self.validation_indices, self.num_pool)
        save_run_config(self.run_dir, self.cfg, self.model_cfg, peft=self.method.config_dict())

    def training_state(self) -> dict:
        """The full training state: what a checkpoint holds."""
        return {
            "step": self.step,
            "train_config": dataclasses.asdict(self.cfg),
            "model_config": self.model_cfg.to_dict(),
            **self.method.state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "convergence_window": self.window.state(),
            "train_seconds": self.train_seconds,
        }

    def restore_state(self, state: dict, source) -> None:
        """Restore :meth:`training_state` (configurations not checked)."""
        self.method.load_state(state, source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        window = state.get("convergence_window")
        self.window = (
            convergence.Window.from_state(window)
            if window is not None
            else convergence.Window(self.variational, step=self.step)
        )

    def save_checkpoint(self) -> None:
        """Atomically write the full training state (rank 0 only when data-parallel)."""
        if not self.is_main:
            return
        state = self.training_state()
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> None:
        """Restore the state written by :meth:`save_checkpoint`, refusing a mismatched one."""
        path = self.checkpoint_path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: {err}); it "
                "was left untouched: move it away to start afresh"
            ) from err
        try:
            current = {**dataclasses.asdict(self.cfg), **self.model_cfg.to_dict()}
            defaults = dataclasses.asdict(TrainConfig())  # of options newer than the checkpoint
            saved = {**defaults, **state["train_config"], **state["model_config"]}
            for key in ("output_dir", "device", "report_to", "eval_every_epoch"):
                saved[key] = current[key]  # free to change on resume
            diffs = config_differences(saved, current)
            if diffs:
                raise ValueError(
                    f"checkpoint {path} was written with another configuration "
                    f"({'; '.join(diffs)}); resume with the same options, or choose another "
                    "--output-dir"
                )
            self.restore_state(state, path)
        except (KeyError, RuntimeError) as err:
            raise ValueError(f"checkpoint {path} is incomplete or mismatched: {err}") from err
        runs.truncate_history(self.run_dir, self.step)
        logger.info("resumed %s at step %d", self.run_dir, self.step)

    def _log(self, record: dict) -> None:
        if self.is_main:
            runs.append_history(self.run_dir, record)

    def _start_tracking(self) -> None:
        """Create the tracker of ``report_to`` (rank 0); a new run records its configuration."""
        if not self.is_main:
            return
        self.tracker = make_tracker(self.cfg.report_to, self.run_dir, resumed_at=self.step)
        if self.tracker is not None and self.step == 0:
            config = {"train": dataclasses.asdict(self.cfg), "monteclora": self.model_cfg.to_dict()}
            self.tracker.log_config(config)

    def _track(self, scalars: dict, step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_scalars(scalars, step)

    def _stop_tracking(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None

    def _batches(self):
        """Yield (step, epoch, batch) from ``self.step`` on; epoch e is shuffled by seed + e."""
        while self.step < self.total_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            loader = make_loader(
                self.train_set,
                self.collator,
                self.cfg.batch_size,
                shuffle=True,
                seed=self.cfg.seed + epoch,
            )
            for batch in itertools.islice(loader, offset, None):
                if self.step >= self.total_steps:
                    return
                yield epoch, batch

    def train(self, resume: bool = False) -> dict:
        """Run (or resume) the loop, then evaluate and write the final artefacts."""
        if self.parallel is None:
            self.prepare_run_dir(resume)
        else:
            self.parallel.prepare_run_dir(self, resume)
        self._start_tracking()
        try:
            return self._train()
        finally:
            self._stop_tracking()

    def _train(self) -> dict:
        """The loop of :meth:`train`, once the run directory is ready."""
        self.method.network.train()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=self.cfg.method,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        for epoch, batch in self._batches():
            started = time.perf_counter()
            self._set_kl_factor()
            try:
                if self.parallel is None:
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    loss, terms = self.method.loss(batch)
                    loss.backward()
                else:
                    loss, terms = self.parallel.loss(self.method, batch, self.step)
                    loss.backward()
                    self.parallel.all_reduce_gradients(self.params)
                for param in held_parameters(
                    self.cfg, self.step, self.guide_delay, self.params, self.variational_ids
                ):
                    param.grad = None
                torch.nn.utils.clip_grad_norm_(
                    self.params, self.cfg.max_grad_norm, error_if_nonfinite=True
                )
            except (FloatingPointError, RuntimeError) as err:
                if not isinstance(err, FloatingPointError) and "non-finite" not in str(err):
                    raise
                kept = (
                    f"the last good checkpoint is {self.checkpoint_path}"
                    if self.checkpoint_path.is_file()
                    else "no checkpoint was written yet"
                )
                raise TrainingError(
                    f"non-finite loss or gradient at step {self.step + 1} (epoch {epoch}): "
                    f"{err}; {kept}"
                ) from err
            self.window.add_gradients(self.variational)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            lrs = self.scheduler.get_last_lr()
            lr = lrs[0]
            self.scheduler.step()
            self.step += 1
            record = {
                "kind": "train",
                "step": self.step,
                "epoch": epoch,
                "lr": lr,
                "loss": loss.item(),
            }
            record.update({k: v.item() for k, v in terms.items()})
            self.train_seconds += time.perf_counter() - started
            self._log(record)
            scalars = {f"train/{k}": v for k, v in record.items() if k not in _NOT_SCALARS}
            self._track(scalars | ({"train/guide_lr": lrs[1]} if len(lrs) > 1 else {}), self.step)
            bar.update(1)
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in record.items() if k not in ("kind", "step", "epoch")},
                refresh=False,
            )
            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                if self.cfg.eval_every_epoch or self.cfg.keep_epoch_checkpoints:
                    metrics = self.evaluate(epoch)
                    self.method.network.train()
                    self._log({"kind": "eval", "step": self.step, "epoch": epoch, **metrics})
                    if self.tracker is not None:
                        self.tracker.log_metrics(metrics, self.step, "eval")
                self._log_convergence(epoch)
                if self.cfg.keep_epoch_checkpoints:
                    self._keep_epoch(epoch)
                self.save_checkpoint()
            elif self.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        return self.finish()

    def _log_convergence(self, epoch: int) -> None:
        """Write the convergence record of the window that ends now, and start the next."""
        if self.is_main:
            losses = [
                r["loss"]
                for r in runs.read_history(self.run_dir, kind="train")
                if self.window.step < r["step"] <= self.step
            ]
            record = convergence.convergence_record(
                self.step, epoch, self.window, losses, self.variational
            )
            self._log(record)
            if self.tracker is not None:  # its scalar figures; not those per parameter
                figures = {k: v for k, v in record.items() if not isinstance(v, dict)}
                figures = {k: v for k, v in figures.items() if k not in (*_NOT_SCALARS, "window")}
                self.tracker.log_metrics(figures, self.step, "convergence")
        self.window = convergence.Window(self.variational, step=self.step)

    def evaluate(self, epoch: int | None = None) -> dict:
        """Metrics of both prediction modes on the evaluation split (kept in ``evaluation``).

        Those of the task's likelihood: accuracy, NLL, ECE, Brier (and the task's extra
        metrics) of the class probabilities; per-token ``nll``, ``perplexity`` and
        ``num_tokens`` for next-token tasks.

        Returns
        -------
        dict
            ``{"posterior_mean": {...}, "posterior_predictive": {...}}``.
        """
        loader = make_loader(
            self.eval_set, self.collator, self.cfg.batch_size, shuffle=False, seed=0
        )
        started = time.perf_counter()
        self.evaluation = evaluate(
            self.method,
            self.likelihood,
            loader,
            self.cfg.num_samples,
            self.cfg.seed,
            self.progress,
        )
        self.eval_seconds = time.perf_counter() - started
        metrics = self.evaluation.metrics(self.spec.metrics)
        logger.info("epoch %s: %s", epoch, self.evaluation.summary(metrics))
        self.eval_metrics = metrics
        return metrics

    def _write_validation(self, directory: Path) -> None:
        """Evaluate the same S draws on the carved validation split; write under ``directory``."""
        cfg, data = self.cfg, self.validation_set
        loader = make_loader(data, self.collator, cfg.batch_size, shuffle=False, seed=0)
        result = evaluate(self.method, self.likelihood, loader, cfg.num_samples, cfg.seed)
        if self.is_main:
            split = runs.VALIDATION_SPLIT
            write_evaluation(directory, result, self.spec, split, cfg.method, len(data))

    def _keep_epoch(self, epoch: int) -> None:
        """Keep the state and predictions of this epoch end (``keep_epoch_checkpoints``)."""
        directory = runs.epoch_dir(self.run_dir, epoch + 1)
        if self.validation_set is not None:
            self._write_validation(directory)
        if self.is_main:
            state = self.method.state()
            atomic_write(directory / runs.EPOCH_STATE_FILE, lambda tmp: torch.save(state, tmp))
            self.evaluation.save(directory)
            runs.write_metrics(
                directory, {"epoch": epoch + 1, "step": self.step, **self.eval_metrics}
            )
            runs.prune_epoch_dirs(self.run_dir, self.cfg.keep_epoch_checkpoints)

    def finish(self) -> dict:
        """Write the method's artefacts, the metrics and the evaluation's files.

        ``metrics.json`` holds the task, split, method, ``num_examples`` (evaluated),
        ``num_train_examples`` (N), ``num_samples`` (the draws of the predictive), ``steps``
        and one entry per prediction mode. The evaluation writes what its likelihood keeps
        (``predictions.npz`` for class probabilities). With a carved validation split, the
        same draws are also evaluated on it, into ``evaluations/{task}-train-validation/``.
        """
        if self.eval_metrics is None:
            self.evaluate()
            if self.tracker is not None:
                self.tracker.log_metrics(self.eval_metrics, self.step, "eval")
        if self.is_main:
            self.method.save(self.run_dir, self.cfg.num_samples, self.cfg.seed)
            self.evaluation.save(self.run_dir)
        if self.validation_set is not None:
            self._write_validation(self.run_dir)
        metrics = {
            "task": self.spec.name,
            "split": self.cfg.eval_split,
            "method": self.cfg.method,
            "num_examples": len(self.eval_set),
            "num_train_examples": len(self.train_set),
            "num_samples": self.evaluation.num_draws,
            "steps": self.step,
            **self.eval_metrics,
        }
        if self.is_main:
            runs.write_metrics(self.run_dir, metrics)
            runs.write_timing(self.run_dir, self.train_seconds, self.eval_seconds)
        return metrics


def train(
    config: TrainConfig,
    model_config: MonteCLoRAConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune as configured; returns the final metrics (also in ``metrics.json``)."""
    return Trainer(config, model_config, progress=progress).train(resume=resume)
