"""Fine-tuning with the MonteCLoRA (or LoRA) objective: loop, checkpoints and run directories."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam
from torch import nn
from tqdm.auto import tqdm

from monteclora_pyro import distributed
from monteclora_pyro.backbones import DEFAULT_MODEL, load_backbone
from monteclora_pyro.baselines import (
    PEFT_METHODS,
    PeftMethod,
    load_peft_run,
    predict_deterministic,
)
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.data import (
    DEFAULT_TASK,
    get_task_spec,
    load_task,
    make_collator,
    make_loader,
    take_first,
    tokenize_task,
)
from monteclora_pyro.evaluation import (
    Predictions,
    draw_guide,
    draw_prior,
    predict,
    prediction_metrics,
    save_latent_samples,
    token_metrics,
)
from monteclora_pyro.files import atomic_write, atomic_write_text
from monteclora_pyro.guides import LoRAGuide, MonteCLoRAGuide
from monteclora_pyro.infer import elbo_terms
from monteclora_pyro.io import load_adapter, save_adapter
from monteclora_pyro.models import MonteCLoRAModel
from monteclora_pyro.models.layer import default_modules_to_save
from monteclora_pyro.models.params import restore_parameters
from monteclora_pyro.peft_interop import load_peft_adapter, monteclora_config_from_peft

logger = logging.getLogger(__name__)

RUN_CONFIG = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.jsonl"
PREDICTIONS_FILE = "predictions.npz"
POSTERIOR_SAMPLES_FILE = "posterior_samples.npz"
PRIOR_SAMPLES_FILE = "prior_samples.npz"
CHECKPOINT_FILE = "checkpoint.pt"
METHODS = {"monteclora": MonteCLoRAGuide, "lora": LoRAGuide}
ALL_METHODS = (*METHODS, *PEFT_METHODS)
OPTIMIZERS = ("adamw", "clipped_adam")


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything about a fine-tuning run other than the MonteCLoRA model itself.

    Parameters
    ----------
    model : str
        ``"minilm"`` (bundled MiniLM-L6), a local Hugging Face directory or a hub id.
    task : str
        A task of :data:`monteclora_pyro.data.TASKS`.
    data_dir : str or None
        Local data directory (else ``$MONTECLORA_DATA``, else the hub).
    method : {"monteclora", "lora", "peft-lora", "peft-monteclora"}
        Our Pyro model with MonteCLoRAGuide or LoRAGuide, or PEFT's LoRA or MonteCLoRA
        (:mod:`monteclora_pyro.baselines`, needs the ``peft`` extra), all on the same loop.
    epochs : int
        Passes over the training set, unless ``max_steps`` is set.
    max_steps : int or None
        Total optimisation steps; overrides ``epochs``. 0 only evaluates the untrained adapter,
        which equals the backbone (B = 0): the "before" of a fine-tune.
    batch_size : int
        Training and evaluation batch size.
    lr : float
        Peak learning rate (linear warm-up, then linear decay to zero).
    weight_decay : float
        Decoupled weight decay (AdamW) or L2 (ClippedAdam).
    optimizer : {"adamw", "clipped_adam"}
        ``torch.optim.AdamW`` or Pyro's ``ClippedAdam``.
    warmup_ratio : float
        Fraction of the steps spent warming up.
    max_grad_norm : float
        Gradient clipping threshold (global norm).
    max_length : int
        Maximum tokens per example.
    max_train_examples, max_eval_examples : int or None
        Keep only the first N examples of the training and evaluation splits.
    eval_split : str
        Split evaluated at every epoch end and at the end.
    num_samples : int
        Posterior draws S for the posterior predictive.
    seed : int
        Seeds initialisation, data order, noise and evaluation draws.
    checkpoint_every : int
        Steps between checkpoints (one is also written at every epoch end).
    output_dir : str
        The run directory.
    device : str
        Torch device of a one-process run: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``. A
        data-parallel run (see :mod:`monteclora_pyro.distributed`) uses the launcher's devices.
        Not part of the run's identity: a run can resume on another device.
    from_peft : str or None
        A PEFT LoRA adapter directory to start from (post-hoc MonteCLoRA, ``method`` must be
        ``"monteclora"``): μ, B and the saved head come from the adapter and stay frozen; only
        the guide trains. See :mod:`monteclora_pyro.peft_interop`.
    """

    model: str = DEFAULT_MODEL
    task: str = DEFAULT_TASK
    data_dir: str | None = None
    method: str = "monteclora"
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    max_length: int = 128
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    eval_split: str = "validation"
    num_samples: int = 16
    seed: int = 0
    checkpoint_every: int = 200
    output_dir: str = "runs/monteclora"
    device: str = "cpu"
    from_peft: str | None = None

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: {allowed}")

        for name in ("epochs", "batch_size", "max_length", "num_samples", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "it must be an integer >= 1")
        for name in ("max_steps", "max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            least = 0 if name == "max_steps" else 1
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < least
            ):
                fail(name, f"it must be an integer >= {least}, or None")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            fail("seed", "it must be an integer >= 0")
        if not self.lr > 0 or not math.isfinite(self.lr):
            fail("lr", "it must be a finite number > 0")
        if not self.weight_decay >= 0:
            fail("weight_decay", "it must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            fail("warmup_ratio", "it must lie in [0, 1)")
        if not self.max_grad_norm > 0:
            fail("max_grad_norm", "it must be > 0")
        if self.method not in ALL_METHODS:
            fail("method", f"allowed values are {', '.join(map(repr, ALL_METHODS))}")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"allowed values are {', '.join(map(repr, OPTIMIZERS))}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            fail("device", "it must be a torch device such as 'cpu', 'cuda', 'cuda:1' or 'mps'")
        if isinstance(self.from_peft, os.PathLike):
            self.from_peft = os.fspath(self.from_peft)
        if self.from_peft is not None:
            if not isinstance(self.from_peft, str) or not self.from_peft:
                fail("from_peft", "it must be a PEFT adapter directory, or None")
            if self.method != "monteclora":
                fail("method", "post-hoc training from a PEFT adapter (from_peft) needs it")
        spec = get_task_spec(self.task)
        if spec.kind != "classification" and self.method in PEFT_METHODS:
            fail("method", f"the PEFT baselines run classification tasks only, not {spec.kind}")


def save_run_config(
    run_dir: Path,
    train_cfg: TrainConfig,
    model_cfg: MonteCLoRAConfig,
    peft: dict | None = None,
) -> None:
    """Write ``config.json``: the training and the MonteCLoRA configuration.

    A PEFT baseline also stores PEFT's ``LoraConfig`` under ``"peft"``.
    """
    data = {"train": dataclasses.asdict(train_cfg), "monteclora": model_cfg.to_dict()}
    if peft is not None:
        data["peft"] = peft
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_text(run_dir / RUN_CONFIG, text)


def load_run_config(run_dir: str | Path) -> tuple[TrainConfig, MonteCLoRAConfig]:
    """Read ``config.json`` of a run directory."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run directory")
    try:
        data = json.loads(path.read_text())
        return TrainConfig(**data["train"]), MonteCLoRAConfig.from_dict(data["monteclora"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid run configuration: {err}") from err


def _differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


class PyroMethod:
    """Our Pyro model with a MonteCLoRA or LoRA guide, behind the training loop's interface.

    The other implementation of this interface is :class:`monteclora_pyro.baselines.PeftMethod`.
    """

    def __init__(
        self,
        method: str,
        hf_model: nn.Module,
        model_cfg: MonteCLoRAConfig,
        num_data: int,
        from_peft: str | None = None,
        likelihood: str | None = None,
    ):
        self.model = MonteCLoRAModel(hf_model, model_cfg, num_data=num_data, likelihood=likelihood)
        if from_peft is not None:  # post-hoc: μ, B and the head frozen at the adapter's
            load_peft_adapter(self.model, from_peft, freeze=True)
        self.guide = METHODS[method](self.model)
        self.params = [p for _, p in self.model.trainable_parameters() if p.requires_grad]
        self.params += list(self.guide.parameters())

    @property
    def network(self) -> nn.Module:
        """The module whose train/eval mode switches dropout."""
        return self.model.hf_model

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The negative ELBO of a batch and its terms, per training example.

        Pyro's and torch's argument and support checks are off here: they cost a few per cent of
        a step, and the loop checks the loss, logits and gradients for non-finite values itself.
        """
        with pyro.validation_enabled(False):
            loss, terms = elbo_terms(self.model, self.guide, **batch)
        n = self.model.num_data
        return loss / n, {k: v / n for k, v in terms.items()}

    def num_draws(self, num_samples: int) -> int:
        """Posterior draws of an evaluation: ``num_samples``, or 1 for a LoRA guide."""
        return num_samples if isinstance(self.guide, MonteCLoRAGuide) else 1

    def predict(self, loader, num_samples: int, seed: int, progress: bool = False) -> Predictions:
        """Both prediction modes; a LoRA guide has a single draw."""
        samples = self.num_draws(num_samples)
        return predict(self.model, self.guide, loader, samples, seed=seed, progress=progress)

    def token_metrics(self, loader, num_samples: int, seed: int, progress: bool = False) -> dict:
        """Per-token NLL and perplexity in both modes, for next-token tasks.

        See :func:`monteclora_pyro.evaluation.token_metrics`; a LoRA guide has a single draw.
        """
        samples = self.num_draws(num_samples)
        return token_metrics(self.model, self.guide, loader, samples, seed=seed, progress=progress)

    def state(self) -> dict:
        """Point estimates and variational parameters, for checkpoints."""
        return {
            "model": {n: p.detach().clone() for n, p in self.model.trainable_parameters()},
            "guide": self.guide.state_dict(),
        }

    def load_state(self, state: dict, path: Path) -> None:
        """Restore :meth:`state`, refusing a checkpoint of other parameters."""
        restore_parameters(dict(self.model.trainable_parameters()), state["model"], path)
        self.guide.load_state_dict(state["guide"])

    def save(self, run_dir: Path, num_samples: int, seed: int) -> None:
        """Write the adapter, and posterior and prior draws of the latent sites."""
        save_adapter(run_dir, self.model, self.guide)
        if isinstance(self.guide, MonteCLoRAGuide):
            save_latent_samples(
                run_dir / POSTERIOR_SAMPLES_FILE, draw_guide(self.guide, num_samples, seed)
            )
            save_latent_samples(
                run_dir / PRIOR_SAMPLES_FILE, draw_prior(self.model, num_samples, seed + 1)
            )


class Trainer:
    """One fine-tuning run: data, model, guide, optimiser, checkpoints and evaluation.

    Classification, multiple-choice and next-token tasks run the same loop; they differ in the
    likelihood of the model (the task's ``kind``) and in :meth:`evaluate`.
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
        causal = self.spec.kind != "classification"
        hf_model, self.tokenizer, new_modules = load_backbone(
            config.model, self.spec.num_labels, self.spec.label_names, causal=causal
        )
        model_config = MonteCLoRAConfig() if model_config is None else model_config
        if config.from_peft is not None:
            model_config = monteclora_config_from_peft(
                config.from_peft, hf_model, model_config, new_modules=new_modules
            )
        if model_config.modules_to_save is None and not causal:  # a causal LM trains no head
            heads = default_modules_to_save(hf_model)
            extra = [
                m for m in new_modules if not any(m == h or m.startswith(h + ".") for h in heads)
            ]
            if extra:
                logger.warning("training newly initialised modules %s as well", extra)
            model_config = dataclasses.replace(model_config, modules_to_save=heads + extra)
        self.model_cfg = model_config
        needed = {
            "train": _first(task.splits["train"], config.max_train_examples),
            "eval": _first(task.splits[config.eval_split], config.max_eval_examples),
        }
        tokenized = tokenize_task(
            dataclasses.replace(task, splits=needed), self.tokenizer, config.max_length
        )
        self.collator = make_collator(self.tokenizer, self.spec)
        self.train_set, self.eval_set = tokenized["train"], tokenized["eval"]
        if config.method in PEFT_METHODS:
            self.adapter = PeftMethod(config.method, hf_model, model_config)
            self.model, self.guide = self.adapter.model, None
        else:
            self.adapter = PyroMethod(
                config.method,
                hf_model,
                model_config,
                len(self.train_set),
                config.from_peft,
                likelihood=self.spec.kind,
            )
            self.model, self.guide = self.adapter.model, self.adapter.guide
        if self.parallel is not None:
            self.parallel.place(self.adapter)
            self.device = self.parallel.device
        else:
            self.device = resolve_device(config.device)
            distributed.place(self.adapter, self.device)
        self.params = self.adapter.params
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        self.total_steps = (
            config.max_steps
            if config.max_steps is not None
            else config.epochs * self.steps_per_epoch
        )
        self.optimizer = self._optimizer()
        warmup = int(config.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _linear_schedule(s, warmup, self.total_steps)
        )
        self.step = 0
        self.predictions: Predictions | None = None  # of the last evaluation (not next-token)
        self.eval_metrics: dict | None = None  # of the last evaluation

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return ClippedAdam(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, clip_norm=cfg.max_grad_norm
        )

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def prepare_run_dir(self, resume: bool) -> None:
        """Create the run directory, or restore its checkpoint when resuming."""
        if resume and self.checkpoint_path.is_file():
            self.load_checkpoint()
            return
        if resume:
            logger.warning("no checkpoint in %s: starting from scratch", self.run_dir)
        elif (self.run_dir / RUN_CONFIG).exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose "
                "another --output-dir (nothing was overwritten)"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / HISTORY_FILE).write_text("")
        peft = self.adapter.config_dict() if isinstance(self.adapter, PeftMethod) else None
        save_run_config(self.run_dir, self.cfg, self.model_cfg, peft=peft)

    def training_state(self) -> dict:
        """The full training state: what a checkpoint holds."""
        return {
            "step": self.step,
            "train_config": dataclasses.asdict(self.cfg),
            "model_config": self.model_cfg.to_dict(),
            **self.adapter.state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        }

    def restore_state(self, state: dict, source) -> None:
        """Restore :meth:`training_state` (configurations not checked)."""
        self.adapter.load_state(state, source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])

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
            saved = {**state["train_config"], **state["model_config"]}
            for key in ("output_dir", "device"):
                saved[key] = current[key]
            diffs = _differences(saved, current)
            if diffs:
                raise ValueError(
                    f"checkpoint {path} was written with another configuration "
                    f"({'; '.join(diffs)}); resume with the same options, or choose another "
                    "--output-dir"
                )
            self.restore_state(state, path)
        except (KeyError, RuntimeError) as err:
            raise ValueError(f"checkpoint {path} is incomplete or mismatched: {err}") from err
        self._truncate_history()
        logger.info("resumed %s at step %d", self.run_dir, self.step)

    def _truncate_history(self) -> None:
        path = self.run_dir / HISTORY_FILE
        lines = path.read_text().splitlines() if path.is_file() else []
        kept = [line for line in lines if line and json.loads(line)["step"] <= self.step]
        atomic_write(path, lambda tmp: tmp.write_text("".join(f"{k}\n" for k in kept)))

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        with (self.run_dir / HISTORY_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")

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
        self.adapter.network.train()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=self.cfg.method,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        for epoch, batch in self._batches():
            try:
                if self.parallel is None:
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    loss, terms = self.adapter.loss(batch)
                    loss.backward()
                else:
                    loss, terms = self.parallel.loss(self.adapter, batch, self.step)
                    loss.backward()
                    self.parallel.all_reduce_gradients(self.params)
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
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            lr = self.scheduler.get_last_lr()[0]
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
            self._log(record)
            bar.update(1)
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in record.items() if k not in ("kind", "step", "epoch")},
                refresh=False,
            )
            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                metrics = self.evaluate(epoch)
                self.adapter.network.train()
                self._log({"kind": "eval", "step": self.step, "epoch": epoch, **metrics})
                self.save_checkpoint()
            elif self.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        return self.finish()

    def evaluate(self, epoch: int | None = None) -> dict:
        """Metrics of both prediction modes on the evaluation split.

        Classification and multiple choice: accuracy, NLL, ECE, Brier (and the task's extra
        metrics) of the class probabilities, kept in ``self.predictions``. Next-token tasks:
        :func:`~monteclora_pyro.evaluation.token_metrics` (``nll``, ``perplexity`` and
        ``num_tokens`` of the held-out responses); there are no predictions.

        Returns
        -------
        dict
            ``{"posterior_mean": {...}, "posterior_predictive": {...}}``.
        """
        loader = make_loader(
            self.eval_set, self.collator, self.cfg.batch_size, shuffle=False, seed=0
        )
        args = (loader, self.cfg.num_samples, self.cfg.seed, self.progress)
        if self.spec.kind == "next_token":
            self.predictions = None
            metrics = self.adapter.token_metrics(*args)
            mean, pred = metrics["posterior_mean"], metrics["posterior_predictive"]
            logger.info(
                "epoch %s: token nll %.4f (mean) %.4f (predictive), perplexity %.3f / %.3f",
                epoch,
                mean["nll"],
                pred["nll"],
                mean["perplexity"],
                pred["perplexity"],
            )
        else:
            self.predictions = self.adapter.predict(*args)
            metrics = prediction_metrics(self.predictions, self.spec.metrics)
            mean, pred = metrics["posterior_mean"], metrics["posterior_predictive"]
            logger.info(
                "epoch %s: accuracy %.4f (mean) %.4f (predictive), nll %.4f / %.4f",
                epoch,
                mean["accuracy"],
                pred["accuracy"],
                mean["nll"],
                pred["nll"],
            )
        self.eval_metrics = metrics
        return metrics

    def finish(self) -> dict:
        """Write the adapter, latent draws, metrics and predictions of the finished run.

        ``metrics.json`` holds the task, split, method, ``num_examples``, ``num_samples`` (the
        posterior draws of the predictive), ``steps`` and one entry per prediction mode. A
        classification or multiple-choice run also writes ``predictions.npz``; a next-token run
        does not (its modes hold the per-token ``nll``, ``perplexity`` and ``num_tokens``).
        """
        if self.eval_metrics is None:
            self.evaluate()
        if self.is_main:
            self.adapter.save(self.run_dir, self.cfg.num_samples, self.cfg.seed)
            if self.predictions is not None:
                self.predictions.save(self.run_dir / PREDICTIONS_FILE)
        draws = (
            self.adapter.num_draws(self.cfg.num_samples)
            if self.predictions is None
            else self.predictions.draw_probs.shape[0]
        )
        metrics = {
            "task": self.spec.name,
            "split": self.cfg.eval_split,
            "method": self.cfg.method,
            "num_examples": len(self.eval_set),
            "num_samples": draws,
            "steps": self.step,
            **self.eval_metrics,
        }
        if self.is_main:
            text = json.dumps(metrics, indent=2) + "\n"
            atomic_write_text(self.run_dir / METRICS_FILE, text)
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


def resolve_device(name: str) -> torch.device:
    """The torch device ``name``, refusing one this machine does not have."""
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(
                f"TrainConfig.device={name!r} is invalid: this machine has {count} CUDA "
                "device(s); use 'cpu'"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"TrainConfig.device={name!r} is invalid: MPS is not available; use 'cpu'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"TrainConfig.device={name!r} is invalid: the Trainer runs on 'cpu', 'cuda' or 'mps'"
        )
    return device


def load_run(run_dir: str | Path) -> tuple[nn.Module, nn.Module | None, object, TrainConfig]:
    """Rebuild the trained model, guide and tokenizer of a finished run.

    For a PEFT baseline the model is PEFT's model and the guide is ``None``.
    """
    run_dir = Path(run_dir)
    train_cfg, _ = load_run_config(run_dir)
    spec = get_task_spec(train_cfg.task)
    hf_model, tokenizer, _ = load_backbone(
        train_cfg.model, spec.num_labels, spec.label_names, causal=spec.kind != "classification"
    )
    if train_cfg.method in PEFT_METHODS:
        return load_peft_run(run_dir, hf_model), None, tokenizer, train_cfg
    model, guide = load_adapter(run_dir, hf_model)
    return model, guide, tokenizer, train_cfg


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

    Writes ``metrics.json`` and ``predictions.npz`` under
    ``RUN_DIR/evaluations/{task}-{split}/`` and returns the metrics. A run of a next-token task
    is evaluated by :func:`~monteclora_pyro.evaluation.token_metrics` (per-token ``nll``,
    ``perplexity`` and ``num_tokens`` in each mode) and writes no ``predictions.npz``.

    Raises
    ------
    ValueError
        If the task is of another kind than the run's, has another number of labels, or lacks
        the split.
    """
    run_dir = Path(run_dir)
    cfg, _ = load_run_config(run_dir)
    task_name = task or cfg.task
    spec = get_task_spec(task_name)
    trained = get_task_spec(cfg.task)
    trained_names = trained.label_names
    if spec.kind != trained.kind:
        raise ValueError(
            f"task {spec.name} is a {spec.kind} task, but the run in {run_dir} was trained on "
            f"{trained.name}, a {trained.kind} task: evaluate it on a {trained.kind} task"
        )
    if spec.num_labels != trained.num_labels:
        raise ValueError(
            f"task {spec.name} has {spec.num_labels} labels {list(spec.label_names)}, but the "
            f"run in {run_dir} was trained on {cfg.task} with {trained.num_labels}"
        )
    if spec.label_names != trained_names:
        logger.warning(
            "label names differ: %s (run) vs %s (%s); ids are matched by position",
            trained_names,
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
    model, guide, tokenizer, cfg = load_run(run_dir)
    raw = _first(loaded.splits[split], max_examples)
    dataset = tokenize_task(
        dataclasses.replace(loaded, splits={split: raw}), tokenizer, cfg.max_length
    )[split]
    loader = make_loader(
        dataset, make_collator(tokenizer, spec), batch_size or cfg.batch_size, shuffle=False, seed=0
    )
    samples = (num_samples or cfg.num_samples) if cfg.method == "monteclora" else 1
    predictions = None
    if spec.kind == "next_token":
        modes = token_metrics(model, guide, loader, samples, seed=cfg.seed, progress=progress)
    else:
        if guide is None:
            predictions = predict_deterministic(model, loader, progress)
        else:
            predictions = predict(model, guide, loader, samples, seed=cfg.seed, progress=progress)
        samples = predictions.draw_probs.shape[0]
        modes = prediction_metrics(predictions, spec.metrics)
    out = run_dir / "evaluations" / f"{spec.name}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    if predictions is not None:
        predictions.save(out / PREDICTIONS_FILE)
    metrics = {
        "task": spec.name,
        "split": split,
        "method": cfg.method,
        "num_examples": len(dataset),
        "num_samples": samples,
        **modes,
    }
    text = json.dumps(metrics, indent=2) + "\n"
    atomic_write_text(out / METRICS_FILE, text)
    return metrics


def _first(dataset, n: int | None):
    return dataset if n is None else take_first(dataset, n)


def _linear_schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))
