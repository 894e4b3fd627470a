"""Fine-tuning: methods, the training loop, evaluation and data-parallel training.

- :mod:`~monteclora_pyro.training.base`: the :class:`Method` interface.
- :mod:`~monteclora_pyro.training.methods`: MonteCLoRA and LoRA (Pyro) and the registry
  :data:`METHODS`; :mod:`~monteclora_pyro.training.peft`: PEFT's LoRA and MonteCLoRA.
- :mod:`~monteclora_pyro.training.config`: :class:`TrainConfig` and ``config.json``.
- :mod:`~monteclora_pyro.training.loop`: :class:`Trainer` and :func:`train`.
- :mod:`~monteclora_pyro.training.evaluation`: :func:`evaluate`, :func:`evaluate_run`.
- :mod:`~monteclora_pyro.training.distributed`: several processes through Accelerate.
- :mod:`~monteclora_pyro.training.tracking`: TensorBoard and MLflow (``report_to``).
"""

from monteclora_pyro.training.base import Method
from monteclora_pyro.training.config import (
    OPTIMIZERS,
    POST_HOC_PRESETS,
    PRESET_TRAINING,
    TrainConfig,
    check_preset,
    load_run_config,
    preset_training,
    resolve_device,
    save_run_config,
    two_phase_training,
)
from monteclora_pyro.training.distributed import is_main_process
from monteclora_pyro.training.evaluation import (
    evaluate,
    evaluate_run,
    evaluating,
    load_run,
    predict,
    token_metrics,
)
from monteclora_pyro.training.loop import Trainer, TrainingError, train
from monteclora_pyro.training.methods import (
    METHOD_NAMES,
    METHODS,
    LoRAMethod,
    MonteCLoRAMethod,
    PyroMethod,
    build_method,
)

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "OPTIMIZERS",
    "POST_HOC_PRESETS",
    "PRESET_TRAINING",
    "LoRAMethod",
    "Method",
    "MonteCLoRAMethod",
    "PyroMethod",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "build_method",
    "check_preset",
    "evaluate",
    "evaluate_run",
    "evaluating",
    "is_main_process",
    "load_run",
    "load_run_config",
    "predict",
    "preset_training",
    "resolve_device",
    "save_run_config",
    "token_metrics",
    "train",
    "two_phase_training",
]
