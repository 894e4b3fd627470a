"""The configuration of a fine-tuning run, and where it is stored."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from monteclora_pyro import runs
from monteclora_pyro.backbones import DEFAULT_MODEL
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.data import DEFAULT_TASK, find_saved_dataset, resolve_task_spec
from monteclora_pyro.training.methods import METHODS
from monteclora_pyro.training.tracking import check_report_to

OPTIMIZERS = ("adamw", "clipped_adam")


def phase_problem(delay: float, restart: bool, freeze: bool) -> tuple[str, str] | None:
    """What is wrong with ``guide_delay_ratio``, ``guide_lr_restart`` and
    ``freeze_adapter_after_delay`` (``delay``, ``restart``, ``freeze``): the first invalid one's
    name and why, or None."""
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay < 1:
        return "guide_delay_ratio", "it must be a number in [0, 1)"
    for name, value, acts in (
        ("guide_lr_restart", restart, "it restarts the guide's schedule"),
        ("freeze_adapter_after_delay", freeze, "it holds the adapter"),
    ):
        if not isinstance(value, bool):
            return name, "it must be True or False"
        if value and not delay:
            return name, f"{acts} after guide_delay_ratio, which is 0"
    return None


@dataclass
class TrainConfig:
    """Everything about a fine-tuning run other than the MonteCLoRA model itself.

    Parameters
    ----------
    model : str
        ``"minilm"`` (bundled MiniLM-L6), a local Hugging Face directory or a hub id.
    task : str or path-like
        A task of :data:`monteclora_pyro.data.TASKS`, or a directory written by ``datasets``'
        ``save_to_disk`` (:mod:`monteclora_pyro.data.saved`; stored as its absolute path).
    data_dir : str or None
        Local data directory (else ``$MONTECLORA_DATA``, else the hub).
    method : str
        A method of :data:`monteclora_pyro.training.methods.METHODS`: ``"monteclora"`` and
        ``"lora"`` (our Pyro model with MonteCLoRAGuide or LoRAGuide), ``"peft-lora"`` and
        ``"peft-monteclora"`` (PEFT's, needs the ``peft`` extra), all on the same loop.
    epochs : float
        Passes over the training set, unless ``max_steps`` is set. A fraction stops part-way
        through the last pass, after ``ceil(epochs × steps per epoch)`` steps (e.g. 0.5 for a
        guide trained around a finished run, ``from_run``); the learning-rate schedule spans
        the steps taken.
    max_steps : int or None
        Total optimisation steps; overrides ``epochs``. 0 only evaluates the untrained adapter,
        which equals the backbone (B = 0): the "before" of a fine-tune.
    batch_size : int
        Training and evaluation batch size.
    lr : float
        Peak learning rate (linear warm-up, then linear decay to zero).
    guide_lr : float or None
        Peak learning rate of the guide's variational parameters (same schedule); ``None``
        means ``lr``, the paper's single learning rate. The default 0.05 is the fastest of
        5e-4, 1e-2 and 5e-2 to approach convergence in ``studies/guide_lr.py``
        (``docs/guide_lr.md``); at the adapter's rate the guide barely moves.
    kl_warmup_steps : int
        The KL terms grow linearly from 0 to full weight over these first steps (0: none),
        counted from the end of ``guide_delay_ratio``.
    guide_delay_ratio : float
        In [0, 1): the fraction of the steps trained as plain LoRA first, with the KL terms
        off and the guide's variational parameters held at their initial values. While
        B = 0 the likelihood cannot oppose a widening q(A), so from the first step the KL
        widens it to the prior's width; a KL warm-up does not slow that under Adam, which
        normalises the gradient's scale (``docs/calibration.md``).
    guide_lr_restart : bool
        Run the guide's learning-rate schedule (warm-up, then linear decay) over the steps
        after ``guide_delay_ratio`` instead of over all steps, so that the guide starts at
        its peak rate rather than at the decayed rate the adapter has reached by then.
        Needs ``guide_delay_ratio`` > 0.
    freeze_adapter_after_delay : bool
        Train in two phases: the adapter (μ, B and the head) runs its learning-rate schedule
        over the ``guide_delay_ratio`` steps, as a LoRA run of that length would, and is then
        held, so that only the guide trains after the delay, around a fixed adapter. Needs
        ``guide_delay_ratio`` > 0; pair it with ``guide_lr_restart``.
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
    validation_fraction : float
        In [0, 0.5): carve ``ceil(fraction * n)`` examples, drawn with
        ``numpy.random.default_rng(seed)``, out of the n training examples (those left by
        ``max_train_examples``) as a validation split, before training; N is the rest. The run
        stores the indices and, at the end, its evaluation on them under
        ``evaluations/{task}-train-validation/`` (for post-hoc calibration). 0: no split.
    eval_split : str
        Split evaluated at every epoch end and at the end.
    eval_every_epoch : bool
        Evaluate at every epoch end (False: only at the end, unless ``keep_epoch_checkpoints``
        needs the epoch's predictions). It leaves training unchanged, so a resumed run may
        change it.
    num_samples : int
        Posterior draws S for the posterior predictive.
    seed : int
        Seeds initialisation, data order, noise and evaluation draws.
    checkpoint_every : int
        Steps between checkpoints (one is also written at every epoch end).
    keep_epoch_checkpoints : int
        M > 0 keeps, for each of the last M epochs, the method's state at the epoch end and its
        predictions on the evaluation (and carved validation) split under ``epochs/``: the
        members of a checkpoint ensemble (``monteclora checkpoint-ensemble``). 0: none.
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
    from_run : str or None
        One of our finished ``lora`` (or ``monteclora``) runs to start from, in the same way
        (post-hoc MonteCLoRA around a LoRA run): its r, lora_alpha, targets, μ, B and heads,
        frozen. The run must carve the same validation split (the source's seed,
        ``validation_fraction`` and ``max_train_examples``). See
        :mod:`monteclora_pyro.training.from_run`.
    report_to : str
        Experiment tracking besides ``history.jsonl``: ``"none"``, ``"tensorboard"``,
        ``"mlflow"``, or several comma-separated (:mod:`monteclora_pyro.training.tracking`).
        Not part of the run's identity.
    """

    model: str = DEFAULT_MODEL
    task: str = DEFAULT_TASK
    data_dir: str | None = None
    method: str = "monteclora"
    epochs: float = 3
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 5e-4
    guide_lr: float | None = 0.05
    kl_warmup_steps: int = 0
    guide_delay_ratio: float = 0.0
    guide_lr_restart: bool = False
    freeze_adapter_after_delay: bool = False
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    max_length: int = 128
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    validation_fraction: float = 0.0
    eval_split: str = "validation"
    eval_every_epoch: bool = True
    num_samples: int = 16
    seed: int = 0
    checkpoint_every: int = 200
    keep_epoch_checkpoints: int = 0
    output_dir: str = "runs/monteclora"
    device: str = "cpu"
    from_peft: str | None = None
    from_run: str | None = None
    report_to: str = "none"

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: {allowed}")

        epochs = self.epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int | float):
            fail("epochs", "it must be a number > 0")
        if not (epochs > 0 and math.isfinite(epochs)):
            fail("epochs", "it must be a finite number > 0")
        for name in ("batch_size", "max_length", "num_samples", "checkpoint_every"):
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
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            fail("validation_fraction", "it must be a number in [0, 0.5)")
        if not 0 <= fraction < 0.5:
            fail("validation_fraction", "it must lie in [0, 0.5)")
        if not self.lr > 0 or not math.isfinite(self.lr):
            fail("lr", "it must be a finite number > 0")
        if not isinstance(self.eval_every_epoch, bool):
            fail("eval_every_epoch", "it must be True or False")
        keep = self.keep_epoch_checkpoints
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            fail("keep_epoch_checkpoints", "it must be an integer >= 0")
        warmup = self.kl_warmup_steps
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            fail("kl_warmup_steps", "it must be an integer >= 0")
        phases = (self.guide_delay_ratio, self.guide_lr_restart, self.freeze_adapter_after_delay)
        if problem := phase_problem(*phases):
            fail(*problem)
        if self.guide_lr is not None and not (self.guide_lr > 0 and math.isfinite(self.guide_lr)):
            fail("guide_lr", "it must be a finite number > 0, or None (the same as lr)")
        if not self.weight_decay >= 0:
            fail("weight_decay", "it must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            fail("warmup_ratio", "it must lie in [0, 1)")
        if not self.max_grad_norm > 0:
            fail("max_grad_norm", "it must be > 0")
        if self.method not in METHODS:
            fail("method", f"allowed values are {', '.join(map(repr, METHODS))}")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"allowed values are {', '.join(map(repr, OPTIMIZERS))}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            fail("device", "it must be a torch device such as 'cpu', 'cuda', 'cuda:1' or 'mps'")
        for name, what in (("from_peft", "a PEFT adapter"), ("from_run", "a finished run")):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, value := os.fspath(value))
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                fail(name, f"it must be {what} directory, or None")
            if not METHODS[self.method].post_hoc:
                post_hoc = [m for m, method in METHODS.items() if method.post_hoc]
                fail("method", f"{name} (post-hoc training) needs it to be one of {post_hoc}")
        if self.from_peft is not None and self.from_run is not None:
            fail("from_run", "start from a PEFT adapter (from_peft) or a run, not both")
        try:
            check_report_to(self.report_to)
        except ValueError as err:
            raise ValueError(f"TrainConfig.{err}") from None
        saved = find_saved_dataset(self.task)
        if saved is not None:
            self.task = str(saved)
        likelihood = resolve_task_spec(self.task).likelihood
        allowed = METHODS[self.method].likelihoods
        if allowed is not None and likelihood not in allowed:
            fail(
                "method", f"{self.method} runs {' and '.join(allowed)} tasks only, not {likelihood}"
            )

    def total_steps(self, steps_per_epoch: int) -> int:
        """The run's optimisation steps: ``max_steps``, else ``epochs`` passes of
        ``steps_per_epoch``, a part of one rounded up."""
        if self.max_steps is not None:
            return self.max_steps
        return math.ceil(round(self.epochs * steps_per_epoch, 9))


def delay_steps(ratio: float, total: int) -> int:
    """The steps of ``total`` before ``guide_delay_ratio`` ``ratio`` ends, whole ones only (a
    product a rounding error short of a whole number, such as 0.7 of 90, counts as it)."""
    return math.floor(round(ratio * total, 9))


def two_phase_training(epochs: float, delay: float = 0.5) -> dict:
    """``TrainConfig`` settings that train the adapter as a LoRA run of ``epochs`` would, then
    the guide alone around it.

    The run lasts ``epochs / delay`` epochs (to 9 decimals; a whole number stays an int): the
    adapter runs its learning-rate schedule over the first ``delay`` of the steps, as many as
    LoRA's run of ``epochs`` takes, and is then held, while the guide's schedule restarts at its
    peak rate (``guide_delay_ratio``, ``freeze_adapter_after_delay``, ``guide_lr_restart``).
    ``delay`` 6/7 after 3 epochs gives the guide half an epoch.
    """
    total = round(epochs / delay, 9)
    return {
        "epochs": int(total) if total.is_integer() else total,
        "guide_delay_ratio": delay,
        "guide_lr_restart": True,
        "freeze_adapter_after_delay": True,
    }


# The training settings each MonteCLoRAConfig preset was selected with (docs/calibration.md):
# the command line's --preset and `make demo` apply them; with the Python API, take them from
# preset_training. "uncertainty": half an epoch of the guide alone, at guide_lr 0.2, around a
# finished LoRA adapter (sixteenth pass).
PRESET_TRAINING = {"uncertainty": {"epochs": 0.5, "guide_lr": 0.2}}
# The presets trained around a finished LoRA adapter (from_run or from_peft), not from scratch.
POST_HOC_PRESETS = ("uncertainty",)


def preset_training(name: str | None) -> dict:
    """The ``TrainConfig`` settings of the ``MonteCLoRAConfig`` preset ``name``.

    Parameters
    ----------
    name : str or None
        A preset (:data:`monteclora_pyro.config.PRESETS`); one without training settings (or
        None) gives ``{}``.

    Returns
    -------
    dict
        Keyword arguments of ``TrainConfig``. A preset of :data:`POST_HOC_PRESETS` trains a
        guide around a finished LoRA run, which ``from_run`` names, e.g.
        ``TrainConfig(task="mrpc", from_run="runs/mrpc-lora", **preset_training("uncertainty"))``
        (:func:`check_preset` says what is missing).
    """
    return dict(PRESET_TRAINING.get(name, {}))


def check_preset(name: str | None, train_cfg: TrainConfig) -> None:
    """Fail unless ``train_cfg`` can train the preset ``name``: a preset of
    :data:`POST_HOC_PRESETS` needs the finished LoRA adapter it trains its guide around."""
    if name in POST_HOC_PRESETS and train_cfg.from_run is None and train_cfg.from_peft is None:
        raise ValueError(
            f"preset {name!r} trains the guide around a finished LoRA run: train one first "
            "(`monteclora train --method lora --output-dir RUN_DIR`), then pass it as from_run "
            "(--from-run RUN_DIR, with the same --seed, --validation-fraction and "
            "--max-train-examples), or a PEFT LoRA adapter as from_peft (--from-peft)"
        )


def save_run_config(
    run_dir: str | Path,
    train_cfg: TrainConfig,
    model_cfg: MonteCLoRAConfig,
    peft: dict | None = None,
) -> None:
    """Write ``config.json``: the training and the MonteCLoRA configuration.

    A PEFT baseline also stores PEFT's ``LoraConfig`` under ``"peft"``.
    """
    runs.write_config(run_dir, dataclasses.asdict(train_cfg), model_cfg.to_dict(), peft)


def load_run_config(run_dir: str | Path) -> tuple[TrainConfig, MonteCLoRAConfig]:
    """Read ``config.json`` of a run directory."""
    data = runs.read_config(run_dir)
    try:
        return TrainConfig(**data["train"]), MonteCLoRAConfig.from_dict(data["monteclora"])
    except (KeyError, TypeError) as err:
        path = Path(run_dir) / runs.CONFIG_FILE
        raise ValueError(f"{path} is not a valid run configuration: {err}") from err


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


def config_differences(saved: dict, current: dict) -> list[str]:
    """``"key: saved -> current"`` for every key whose value differs between two configs."""
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
