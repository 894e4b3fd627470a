"""Shared fixtures: tiny Hugging Face classifiers built from configs (no download)."""

from __future__ import annotations

import contextlib

import pyro
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

VOCAB = 64


def tiny_hf_model(
    arch: str = "bert",
    num_labels: int = 2,
    seed: int = 0,
    hidden: int = 32,
    initializer_range: float = 0.02,
):
    """A two-layer classifier of the given architecture, in eval mode, seeded."""
    torch.manual_seed(seed)
    common = {
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 2 * hidden,
        "num_labels": num_labels,
        "initializer_range": initializer_range,
    }
    if arch == "bert":
        model = BertForSequenceClassification(BertConfig(**common))
    elif arch == "roberta":
        model = RobertaForSequenceClassification(
            RobertaConfig(**common, max_position_embeddings=40, pad_token_id=1)
        )
    elif arch == "llama":
        model = LlamaForSequenceClassification(
            LlamaConfig(**common, num_key_value_heads=2, pad_token_id=0)
        )
    else:
        raise ValueError(arch)
    return model.eval()


def token_batch(batch: int = 4, length: int = 7, seed: int = 1) -> torch.Tensor:
    """Random token ids that avoid the pad ids 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, length), generator=generator)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Each test starts with an empty param store, seeded, with validation on, on one thread.

    Tiny tensors: thread hand-offs cost more than they save, and stall on a busy machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
    torch.set_num_threads(threads)


POSITIVE = ["good", "great", "fine", "lovely", "superb", "happy"]
NEGATIVE = ["bad", "awful", "poor", "dreadful", "sad", "boring"]
NEUTRAL = ["the", "film", "was", "a", "plot", "and", "very", "movie", "it", "is"]


def write_toy_sst2(root, n_train: int = 128, n_dev: int = 64, seed: int = 0):
    """A separable SST-2-layout data set: sentiment words decide the label."""
    import random

    rng = random.Random(seed)
    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        lines = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            words = rng.sample(NEUTRAL, 4) + rng.sample(POSITIVE if label else NEGATIVE, 2)
            rng.shuffle(words)
            lines.append(f"{' '.join(words)}\t{label}")
        (folder / name).write_text("\n".join(lines) + "\n")
    return root


def write_tiny_backbone(directory, hidden: int = 32, seed: int = 0):
    """Save a tiny BERT classifier and a word-level tokenizer as a Hugging Face directory."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *NEUTRAL]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(directory)
    # A wide initialisation makes the random backbone's features separate the toy classes.
    model = tiny_hf_model("bert", seed=seed, hidden=hidden, initializer_range=0.2)
    model.config.vocab_size = VOCAB
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def toy_assets(tmp_path):
    """(model directory, data directory) for end-to-end training on a tiny model."""
    return write_tiny_backbone(tmp_path / "tiny-bert"), write_toy_sst2(tmp_path / "glue")


def tiny_causal_lm(
    vocab_size: int = VOCAB, hidden: int = 32, seed: int = 0, initializer_range: float = 0.02
):
    """A two-layer ``LlamaForCausalLM`` (untied head), in eval mode, seeded.

    At the default ``initializer_range`` its logits are nearly flat; a wider one (0.2) gives a
    head that can express peaked next-token distributions, so that adapters can learn.
    """
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    return LlamaForCausalLM(config).eval()


def word_tokenizer(words: list[str]):
    """A whitespace/punctuation word-level fast tokenizer: ids 0 pad, 1 eos, 2 unk, then words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]"
    )


def task_words() -> list[str]:
    """Every word and punctuation mark of the packaged tasks and the plain templates."""
    words = ["Question", "Answer", "Instruction", "Response", ":"]
    from tokenizers import pre_tokenizers

    from monteclora_pyro.data import load_task

    splitter = pre_tokenizers.Whitespace()
    for name in ("mc-commonsense", "tiny-instruct"):
        for dataset in load_task(name).splits.values():
            for row in dataset:
                for text in (
                    *row.get("choices", ()),
                    *(v for v in row.values() if isinstance(v, str)),
                ):
                    words += [w for w, _ in splitter.pre_tokenize_str(text)]
    return list(dict.fromkeys(words))


def toy_config(toy_assets, out, **overrides):
    """A ``TrainConfig`` on the toy assets: 2 epochs of batches of 32 at lr 3e-2, S = 4."""
    from monteclora_pyro.training import TrainConfig

    model_dir, data_dir = toy_assets
    options = {
        "model": str(model_dir),
        "task": "sst2",
        "data_dir": str(data_dir),
        "epochs": 2,
        "batch_size": 32,
        "lr": 3e-2,
        "num_samples": 4,
        "output_dir": str(out),
    }
    return TrainConfig(**{**options, **overrides})


class Interrupted(Exception):
    """A training run killed on purpose by :func:`dies_at_step`."""


@contextlib.contextmanager
def dies_at_step(step: int):
    """Within the block, the ``step``-th loss of a Pyro method raises :class:`Interrupted`,
    which the block must raise (a run killed mid-training, to be resumed)."""
    import monteclora_pyro.training.methods as methods

    original, calls = methods.elbo_terms, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise Interrupted
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(methods, "elbo_terms", dying)
        with pytest.raises(Interrupted):
            yield
