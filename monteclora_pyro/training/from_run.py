"""Post-hoc MonteCLoRA around one of our finished runs (``TrainConfig.from_run``).

A ``lora`` (or ``monteclora``) run of ``monteclora train`` keeps its adapter in our own format;
a guide trained around it, with μ, B and the head frozen at the run's, adds a posterior to a
LoRA the user already has, at the cost of the guide's epochs alone. The new run must carve the
same validation split as its source: the guide may not train on examples that the source held
out for selection, nor be selected on examples the source trained on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from monteclora_pyro import runs
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.io import ADAPTER_FILE, META_FILE, read_meta, read_tensors
from monteclora_pyro.models import MonteCLoRAModel
from monteclora_pyro.models.layer import match_target_modules
from monteclora_pyro.models.params import restore_parameters
from monteclora_pyro.peft_interop import monteclora_config_from_peft

if TYPE_CHECKING:
    from monteclora_pyro.training.config import TrainConfig

logger = logging.getLogger(__name__)

ADAPTER_FIELDS = ("r", "lora_alpha", "target_modules", "modules_to_save")  # the source's


def source_run(run_dir: str | Path) -> dict:
    """The configuration of a finished run whose adapter can be started from.

    Raises ``FileNotFoundError`` for an unfinished run and ``ValueError`` for a PEFT run (its
    adapter is PEFT's: ``from_peft``).
    """
    run_dir = Path(run_dir)
    config = runs.read_config(run_dir)
    if "peft" in config:
        raise ValueError(
            f"{run_dir} is a {config['train']['method']} run: start from its PEFT adapter with "
            f"from_peft={str(run_dir / 'peft_adapter')!r} instead of from_run"
        )
    for name in (ADAPTER_FILE, META_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir} has no {name}: is the run finished? (`monteclora train` writes it "
                "at the end; resume it with --resume)"
            )
    return config


def monteclora_config_from_run(
    run_dir: str | Path, hf_model: nn.Module, config: MonteCLoRAConfig
) -> MonteCLoRAConfig:
    """``config`` with the r, lora_alpha, target modules and heads of the run in ``run_dir``.

    A field of ``config`` left at its default is taken from the run; one set to another value
    than the run's is an error. The other fields (K, ε, priors, objective) stay as given.
    """
    source = MonteCLoRAConfig.from_dict(source_run(run_dir)["monteclora"])
    paths = read_meta(run_dir)["target_paths"]
    default = MonteCLoRAConfig()
    conflicts = [
        f"{field}={getattr(config, field)!r} (the run has {getattr(source, field)!r})"
        for field in ("r", "lora_alpha", "modules_to_save")
        if getattr(config, field) not in (getattr(default, field), getattr(source, field))
    ]
    if config.target_modules is not None:
        ours = match_target_modules(hf_model, config.target_modules)
        if ours != paths:
            conflicts.append(f"target_modules adapting {ours} (the run adapts {paths})")
    if conflicts:
        raise ValueError(
            f"post-hoc training keeps the adapter of {run_dir}, but the config sets "
            f"{'; '.join(conflicts)}: leave these unset to take the run's"
        )
    return dataclasses.replace(
        config, **{field: getattr(source, field) for field in ADAPTER_FIELDS}
    )


def post_hoc_config(
    train_cfg: TrainConfig,
    hf_model: nn.Module,
    config: MonteCLoRAConfig,
    new_modules: Sequence[str] = (),
) -> MonteCLoRAConfig:
    """``config`` with the adapter fields of the PEFT adapter (``from_peft``) or the run
    (``from_run``) that ``train_cfg`` starts from; as it is without either."""
    if train_cfg.from_peft is not None:
        return monteclora_config_from_peft(
            train_cfg.from_peft, hf_model, config, new_modules=new_modules
        )
    if train_cfg.from_run is not None:
        return monteclora_config_from_run(train_cfg.from_run, hf_model, config)
    return config


def check_same_data(train_cfg: TrainConfig, held: np.ndarray, num_pool: int) -> None:
    """Fail unless the run ``train_cfg`` starts from (``from_run``, if any) trained the same
    model on the same task and held out the same ``held`` indices of its ``num_pool`` training
    examples."""
    run_dir = train_cfg.from_run
    if run_dir is None:
        return
    train = source_run(run_dir)["train"]
    for field in ("task", "model"):
        if train[field] != (ours := getattr(train_cfg, field)):
            raise ValueError(f"{run_dir} trained {field}={train[field]!r}, not {ours!r}")
    theirs = runs.read_validation_split(run_dir)
    theirs = np.zeros(0, dtype=np.int64) if theirs is None else theirs
    if len(held) != len(theirs) or not np.array_equal(np.sort(held), np.sort(theirs)):
        raise ValueError(
            f"this run would carve another validation split than {run_dir} ({len(held)} of "
            f"{num_pool} training examples against its {len(theirs)}): pass its seed "
            f"({train['seed']}), validation_fraction ({train['validation_fraction']}) and "
            f"max_train_examples ({train['max_train_examples']})"
        )


def load_run_adapter(model: MonteCLoRAModel, run_dir: str | Path) -> None:
    """Set μ, B and the heads of ``model`` to those of the run in ``run_dir`` and freeze them,
    so that only a guide's variational parameters train."""
    path = Path(run_dir) / ADAPTER_FILE
    restore_parameters(dict(model.trainable_parameters()), read_tensors(path), path)
    for _, param in model.trainable_parameters():
        param.requires_grad_(False)
    logger.info("started from the adapter and heads of %s, frozen", run_dir)
