"""Test assets of the regression (STS-B) likelihood: a GLUE-layout fixture and a tiny backbone."""

from __future__ import annotations

import random

from conftest import NEGATIVE, NEUTRAL, POSITIVE, VOCAB, tiny_hf_model

STSB_HEADER = (
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
)
NOISE_SD = 0.3  # of the fixture's scores around their mean


def stsb_score(words: list[str], rng: random.Random) -> float:
    """2.5 + 0.5·(positive − negative words) + N(0, NOISE_SD²), clipped to [0, 5]."""
    signal = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return min(5.0, max(0.0, 2.5 + 0.5 * signal + rng.gauss(0.0, NOISE_SD)))


def write_toy_stsb(root, n_train: int = 96, n_dev: int = 48, seed: int = 0, bad_row: int = -1):
    """STS-B in the GLUE TSV layout (``STS-B/train.tsv``, ``dev.tsv``); sentiment words set
    the score. ``bad_row >= 0`` writes the score of that training row as ``"n/a"``."""
    rng = random.Random(seed)
    folder = root / "STS-B"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        lines = ["\t".join(STSB_HEADER)]
        for i in range(n):
            polar = rng.choice([POSITIVE, NEGATIVE])
            first = rng.sample(NEUTRAL, 3) + rng.sample(polar, rng.randint(0, 2))
            second = rng.sample(NEUTRAL, 3) + rng.sample(polar, rng.randint(0, 2))
            score = f"{stsb_score(first + second, rng):.3f}"
            if name == "train.tsv" and i == bad_row:
                score = "n/a"
            meta = ["main-captions", "MSRvid.tsv", "2012test", f"{i:04d}", "none", "none"]
            lines.append("\t".join([str(i), *meta, " ".join(first), " ".join(second), score]))
        (folder / name).write_text("\n".join(lines) + "\n")
    return root


def write_tiny_regression_backbone(directory, hidden: int = 32, seed: int = 0):
    """A tiny BERT with a regression head (``num_labels=1``) and a word-level tokenizer."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *NEUTRAL]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(directory)
    model = tiny_hf_model("bert", num_labels=1, seed=seed, hidden=hidden, initializer_range=0.2)
    model.config.vocab_size = VOCAB
    model.config.problem_type = "regression"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
