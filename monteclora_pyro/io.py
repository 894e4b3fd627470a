"""Saving and loading adapters: safetensors for tensors, JSON for configuration."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.files import atomic_write, atomic_write_text
from monteclora_pyro.guides import LoRAGuide, MonteCLoRAGuide
from monteclora_pyro.models import MonteCLoRAModel
from monteclora_pyro.models.params import restore_parameters

ADAPTER_FILE = "adapter_model.safetensors"
GUIDE_FILE = "guide_params.safetensors"
META_FILE = "adapter_meta.json"
GUIDES = {"MonteCLoRAGuide": MonteCLoRAGuide, "LoRAGuide": LoRAGuide}


def save_tensors(path: Path, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Write named tensors to a safetensors file atomically."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in named}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, with a clear error when it is missing or corrupt."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt?): {err}") from err


def save_adapter(
    directory: str | Path, model: MonteCLoRAModel, guide: nn.Module | None = None
) -> Path:
    """Save the adapter, head and variational parameters, the config and metadata.

    Writes ``monteclora_config.json``, ``adapter_meta.json``, ``adapter_model.safetensors``
    and, for a guide with variational parameters, ``guide_params.safetensors``. Every file is
    written atomically.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    save_tensors(directory / ADAPTER_FILE, model.trainable_parameters())
    variational = [] if guide is None else list(guide.named_variational_parameters())
    if variational:
        save_tensors(directory / GUIDE_FILE, variational)
    meta = {
        "num_data": model.num_data,
        "num_labels": model.num_labels,
        "likelihood": model.likelihood.name,
        "guide": None if guide is None else type(guide).__name__,
        "target_paths": list(model.adapters),
        "modules_to_save": model.head_names,
    }
    atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")
    return directory


def read_meta(directory: str | Path) -> dict:
    """The ``adapter_meta.json`` of an adapter directory written by :func:`save_adapter`."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def load_adapter(
    directory: str | Path, hf_model: nn.Module
) -> tuple[MonteCLoRAModel, nn.Module | None]:
    """Rebuild the model (and its guide, if one was saved) around a fresh ``hf_model``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no adapter directory at {directory}")
    config = MonteCLoRAConfig.load(directory)
    meta = read_meta(directory)
    # Adapters saved before the causal likelihoods existed are classifiers.
    likelihood = meta.get("likelihood", "classification")
    model = MonteCLoRAModel(hf_model, config, num_data=meta["num_data"], likelihood=likelihood)
    if list(model.adapters) != meta["target_paths"]:
        raise ValueError(
            f"{directory} adapts {meta['target_paths']}, but this model resolves the targets to "
            f"{list(model.adapters)}: is it the same architecture?"
        )
    restore_parameters(
        model.trainable_parameters(),
        read_tensors(directory / ADAPTER_FILE),
        directory / ADAPTER_FILE,
    )
    guide_name = meta.get("guide")
    if guide_name is None:
        return model, None
    if guide_name not in GUIDES:
        raise ValueError(
            f"{directory / META_FILE}: unknown guide {guide_name!r}; known: {sorted(GUIDES)}"
        )
    guide = GUIDES[guide_name](model)
    variational = dict(guide.named_variational_parameters())
    if variational:
        restore_parameters(
            variational,
            read_tensors(directory / GUIDE_FILE),
            directory / GUIDE_FILE,
        )
    return model, guide
