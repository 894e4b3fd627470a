"""PEFT interoperability: export a run as a PEFT LoRA adapter, start MonteCLoRA from one.

A PEFT LoRA adapter directory holds ``adapter_config.json`` (a ``LoraConfig``) and
``adapter_model.safetensors``, whose keys PEFT's ``get_peft_model_state_dict`` writes as
``base_model.model.{module path}.lora_A.weight`` (A, shape (r, d_in)),
``base_model.model.{module path}.lora_B.weight`` (B, shape (d_out, r)) and, for every module in
``modules_to_save``, ``base_model.model.{module path}.{parameter}``. PEFT computes
``W0 x + (lora_alpha / r) · B A x``: our posterior-mean adapter with A = μ.

- :func:`export_peft_adapter` writes the posterior mean of a run (μ, B and the trained head) in
  that layout; the guide's variational parameters have no place in a LoRA adapter.
- :func:`monteclora_config_from_peft` and :func:`load_peft_adapter` start the paper's post-hoc
  MonteCLoRA from an existing adapter: μ, B and the saved head come from the adapter and are
  frozen, and only the MonteCLoRA sampler (the guide) is trained.

Only the export needs the optional ``peft`` package; reading an adapter does not.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from safetensors import safe_open
from torch import nn

from monteclora_pyro.backbones import DEFAULT_MODEL, resolve_model_path
from monteclora_pyro.config import CONFIG_NAME, MonteCLoRAConfig
from monteclora_pyro.files import atomic_write_text
from monteclora_pyro.io import ADAPTER_FILE, META_FILE, read_meta, read_tensors, save_tensors
from monteclora_pyro.models import MonteCLoRAModel
from monteclora_pyro.models.layer import match_target_modules
from monteclora_pyro.models.params import restore_parameters
from monteclora_pyro.runs import read_config

logger = logging.getLogger(__name__)

PEFT_REQUIREMENT = "peft>=0.20,<0.22"
PEFT_ADAPTER_DIR = "peft_adapter"  # where a peft-* run keeps PEFT's save_pretrained output
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_MATRICES = ("lora_A", "lora_B")
INIT_WEIGHTS = (True, False, "gaussian")
# LoraConfig fields that change the adapted weight, or the base weights it applies to; an
# adapter can be read only when each is unset.
UNSUPPORTED = {
    "use_rslora": "rank-stabilised scaling lora_alpha / sqrt(r)",
    "use_dora": "DoRA magnitude vectors",
    "bias": "trained biases of the base layers",
    "lora_bias": "a bias on lora_B",
    "fan_in_fan_out": "transposed (Conv1D) weights",
    "rank_pattern": "per-layer ranks",
    "alpha_pattern": "per-layer lora_alpha",
    "layers_to_transform": "a subset of the layers",
    "layers_pattern": "a subset of the layers",
    "exclude_modules": "excluded modules",
    "layer_replication": "replicated layers",
    "target_parameters": "adapted parameters rather than modules",
    "trainable_token_indices": "trained token embeddings",
    "monteclora_config": "PEFT's own MonteCLoRA sampler",
    "use_qalora": "quantisation-aware LoRA",
    "use_bdlora": "block-diagonal LoRA",
    "alora_invocation_tokens": "activated LoRA",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
    "velora_config": "VeLoRA",
    "loftq_config": "LoftQ (changes the base weights)",
    "corda_config": "CorDA (changes the base weights)",
    "lora_ga_config": "LoRA-GA (changes the base weights)",
    "eva_config": "EVA initialisation",
}


def require_peft():
    """Import ``peft``, or fail with the command that installs a version with MonteCLoRA."""
    try:
        import peft
    except ImportError as err:
        raise RuntimeError(
            "the PEFT baselines need the optional extra 'peft': "
            f"pip install 'monteclora-pyro[peft]' (or pip install '{PEFT_REQUIREMENT}')"
        ) from err
    if not hasattr(peft, "MontecloraConfig"):
        raise RuntimeError(
            f"peft {peft.__version__} has no MontecloraConfig; install '{PEFT_REQUIREMENT}'"
        )
    return peft


def _is_unset(value) -> bool:
    """Whether a PEFT config field holds its "off" value (0 is a real layer index, not off)."""
    return value is None or value is False or value in ("none", {}, [])


def peft_key(name: str, target_paths: list[str]) -> str:
    """PEFT's state-dict key of one of our trainable parameters.

    ``name`` is a name of :meth:`MonteCLoRAModel.trainable_parameters`: ``"{path}.lora_A"``
    or ``"{path}.lora_B"`` for a path in ``target_paths``, else a head parameter.
    """
    path, _, leaf = name.rpartition(".")
    if leaf in LORA_MATRICES and path in target_paths:
        return f"{PEFT_PREFIX}{name}.weight"
    return PEFT_PREFIX + name


def read_peft_config(adapter_dir: str | Path) -> dict:
    """The validated ``adapter_config.json`` of a PEFT LoRA adapter directory.

    Raises
    ------
    FileNotFoundError
        When the directory, its config or its safetensors weights are missing.
    ValueError
        When the adapter is not a plain LoRA adapter that MonteCLoRA can express.
    """
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / PEFT_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a PEFT adapter directory: no {path.name}")
    if not (adapter_dir / PEFT_WEIGHTS_FILE).is_file():
        others = sorted(p.name for p in adapter_dir.glob("adapter_model.*"))
        hint = f" (found {others}: re-save it with safe_serialization=True)" if others else ""
        raise FileNotFoundError(f"missing file {adapter_dir / PEFT_WEIGHTS_FILE}{hint}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else config
        raise ValueError(f"{path}: peft_type={found!r}; only 'LORA' adapters are supported")
    for field, meaning in UNSUPPORTED.items():
        if not _is_unset(config.get(field)):
            raise ValueError(
                f"{path}: {field}={config[field]!r} ({meaning}) is not supported: MonteCLoRA "
                f"adapts W0 + (lora_alpha / r)·B·A exactly, so {field} must be unset"
            )
    if config.get("init_lora_weights", True) not in INIT_WEIGHTS:
        raise ValueError(
            f"{path}: init_lora_weights={config['init_lora_weights']!r} is not supported (it "
            f"changes the base weights); allowed values are {', '.join(map(repr, INIT_WEIGHTS))}"
        )
    r, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{path}: r={r!r} is invalid: it must be a positive integer")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"{path}: lora_alpha={alpha!r} is invalid: it must be a number > 0")
    targets = config.get("target_modules")
    if not targets or not isinstance(targets, str | list):
        raise ValueError(
            f"{path}: target_modules={targets!r} is invalid: expected a non-empty list of "
            "module names or a regular expression"
        )
    return config


def saved_heads(adapter_dir: str | Path, config: dict) -> list[str]:
    """The ``modules_to_save`` entries whose weights the adapter file holds.

    PEFT lists ``classifier`` and ``score`` for every ``SEQ_CLS`` adapter, present or not;
    only entries with saved weights count.
    """
    with safe_open(str(Path(adapter_dir) / PEFT_WEIGHTS_FILE), framework="pt") as handle:
        keys = list(handle.keys())
    return [
        name
        for name in config.get("modules_to_save") or []
        if any(key.startswith(f"{PEFT_PREFIX}{name}.") for key in keys)
    ]


def monteclora_config_from_peft(
    adapter_dir: str | Path,
    hf_model: nn.Module,
    config: MonteCLoRAConfig | None = None,
    *,
    new_modules: Sequence[str] = (),
) -> MonteCLoRAConfig:
    """``config`` with r, lora_alpha, target_modules and modules_to_save of a PEFT adapter.

    A field of ``config`` left at its default is taken from the adapter; one set to another
    value than the adapter's is an error. The other fields (K, ε, priors, lora_dropout) stay
    as given.

    Parameters
    ----------
    adapter_dir : str or Path
        A PEFT LoRA adapter directory.
    hf_model : nn.Module
        The (not yet adapted) backbone; target modules are compared as resolved module paths.
    config : MonteCLoRAConfig, optional
        The rest of the configuration; defaults to ``MonteCLoRAConfig()``.
    new_modules : list of str
        Modules of ``hf_model`` that were newly initialised on loading: each must be covered by
        the adapter's saved ``modules_to_save``, since post-hoc training keeps them frozen.
    """
    config = MonteCLoRAConfig() if config is None else config
    peft_cfg = read_peft_config(adapter_dir)
    source = Path(adapter_dir) / PEFT_CONFIG_FILE
    default = MonteCLoRAConfig()
    for field in ("r", "lora_alpha"):
        ours, theirs = getattr(config, field), peft_cfg[field]
        if ours != getattr(default, field) and ours != theirs:
            raise ValueError(
                f"MonteCLoRAConfig.{field}={ours!r} conflicts with {field}={theirs!r} in {source}; "
                f"leave {field} at its default to take the adapter's"
            )
    targets = peft_cfg["target_modules"]
    targets = sorted(targets) if isinstance(targets, list) else targets
    if config.target_modules is not None:
        ours = match_target_modules(hf_model, config.target_modules)
        theirs = match_target_modules(hf_model, targets)
        if ours != theirs:
            raise ValueError(
                f"target_modules={config.target_modules!r} adapts {ours}, but the adapter in "
                f"{source} adapts {theirs} (target_modules={targets!r}); leave target_modules "
                "unset to take the adapter's"
            )
    heads = saved_heads(adapter_dir, peft_cfg)
    if heads and config.modules_to_save is not None and set(config.modules_to_save) != set(heads):
        raise ValueError(
            f"modules_to_save={config.modules_to_save!r} conflicts with the modules saved in "
            f"{source} ({heads}); leave modules_to_save unset to take the adapter's"
        )
    untrained = [m for m in new_modules if not any(m == h or m.startswith(h + ".") for h in heads)]
    if untrained:
        raise ValueError(
            f"the backbone's modules {untrained} are newly initialised and {source} saves no "
            f"weights for them (modules_to_save={heads}); post-hoc training keeps them frozen, "
            "so they would stay random: use the backbone the adapter was trained on"
        )
    return dataclasses.replace(
        config,
        r=peft_cfg["r"],
        lora_alpha=float(peft_cfg["lora_alpha"]),
        target_modules=targets,
        modules_to_save=heads or config.modules_to_save,
    )


def load_peft_adapter(
    model: MonteCLoRAModel, adapter_dir: str | Path, *, freeze: bool = True
) -> MonteCLoRAModel:
    """Initialise μ, B and the saved heads of ``model`` from a PEFT LoRA adapter.

    ``model`` must adapt exactly the adapter's modules with its r and lora_alpha (build its
    config with :func:`monteclora_config_from_peft`). Heads of ``model`` that the adapter does
    not save keep the backbone's weights. With ``freeze`` (the post-hoc setting) μ, B and every
    head stop requiring gradients, so that only a guide's variational parameters train.
    """
    adapter_dir = Path(adapter_dir)
    peft_cfg = read_peft_config(adapter_dir)
    source = adapter_dir / PEFT_CONFIG_FILE
    for field in ("r", "lora_alpha"):
        if getattr(model.config, field) != peft_cfg[field]:
            raise ValueError(
                f"the model has {field}={getattr(model.config, field)!r} but {source} has "
                f"{field}={peft_cfg[field]!r}; build the model's config with "
                "monteclora_config_from_peft"
            )
    heads = saved_heads(adapter_dir, peft_cfg)
    missing = [h for h in heads if h not in model.head_names]
    if missing:
        raise ValueError(
            f"{source} saves the modules {missing}, which the model does not train "
            f"(modules_to_save={model.head_names})"
        )
    paths = list(model.adapters)
    named = {
        peft_key(name, paths): param
        for name, param in model.trainable_parameters()
        if name.rpartition(".")[0] in paths or any(name.startswith(h + ".") for h in heads)
    }
    weights = adapter_dir / PEFT_WEIGHTS_FILE
    restore_parameters(named, read_tensors(weights), weights)
    if freeze:
        for _, param in model.trainable_parameters():
            param.requires_grad_(False)
    logger.info("initialised %d adapted layers and heads %s from %s", len(paths), heads, weights)
    return model


def export_peft_adapter(
    run_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write the posterior-mean adapter of a run as a PEFT LoRA adapter directory.

    ``out_dir`` receives ``adapter_model.safetensors`` (A = μ, B and the heads of
    ``modules_to_save``) and then ``adapter_config.json``, each written atomically;
    ``peft.PeftModel.from_pretrained(backbone, out_dir)`` gives the posterior-mean logits.

    Parameters
    ----------
    run_dir : str or Path
        A finished ``monteclora`` or ``lora`` run directory of ``monteclora train``.
    out_dir : str or Path
        The new adapter directory; it must be absent or empty unless ``overwrite``.
    overwrite : bool
        Replace the two files in a non-empty ``out_dir``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    peft = require_peft()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run_config = read_config(run_dir)
    train_cfg = run_config["train"]
    if "peft" in run_config:
        raise ValueError(
            f"{run_dir} is a {train_cfg['method']} run: its adapter is already in PEFT's format in "
            f"{run_dir / PEFT_ADAPTER_DIR}; load that directory with peft.PeftModel.from_pretrained"
        )
    if out_dir.resolve() == run_dir.resolve():
        raise ValueError(f"the PEFT adapter cannot be written into the run directory {run_dir}")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory (nothing was written)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out_dir} is not empty; choose another output directory or pass --overwrite "
            "(nothing was written)"
        )
    for name in (CONFIG_NAME, META_FILE, ADAPTER_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir} has no {name}: is the run finished? (`monteclora train` writes it "
                "at the end)"
            )
    model_cfg = MonteCLoRAConfig.load(run_dir)
    meta = read_meta(run_dir)
    paths, heads = meta["target_paths"], meta["modules_to_save"]
    if any(p == h or p.startswith(h + ".") for p in paths for h in heads):
        raise ValueError(
            f"{run_dir} adapts layers inside its modules_to_save {heads}, which a PEFT LoRA "
            "adapter cannot express"
        )
    tensors = read_tensors(run_dir / ADAPTER_FILE)
    expected = [f"{p}.{m}" for p in paths for m in LORA_MATRICES]
    expected += [n for n in tensors if any(n.startswith(h + ".") for h in heads)]
    if sorted(tensors) != sorted(expected):
        raise ValueError(
            f"{run_dir / ADAPTER_FILE} does not match {run_dir / META_FILE}: "
            f"unexpected {sorted(set(tensors) - set(expected))[:5]}, "
            f"missing {sorted(set(expected) - set(tensors))[:5]}"
        )
    lora_cfg = peft.LoraConfig(
        r=model_cfg.r,
        lora_alpha=model_cfg.lora_alpha,
        lora_dropout=model_cfg.lora_dropout,
        target_modules=list(paths),
        modules_to_save=list(heads) or None,
        base_model_name_or_path=_base_model_name(train_cfg["model"]),
        inference_mode=True,
    )
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in lora_cfg.to_dict().items()}
    save_tensors(out_dir / PEFT_WEIGHTS_FILE, ((peft_key(n, paths), t) for n, t in tensors.items()))
    text = json.dumps(config, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_text(out_dir / PEFT_CONFIG_FILE, text)
    logger.info(
        "exported the posterior mean of %s to %s (the guide's variational parameters are not "
        "part of a LoRA adapter)",
        run_dir,
        out_dir,
    )
    return out_dir


def _base_model_name(name: str) -> str:
    """``base_model_name_or_path`` for a run's ``model``: a local directory made absolute."""
    if name == DEFAULT_MODEL:
        try:
            return resolve_model_path(name)
        except RuntimeError:
            return name
    path = Path(name).expanduser()
    return os.fspath(path.resolve()) if path.is_dir() else name
