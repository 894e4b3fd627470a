"""Tests for the text format: tokenisation, padding collation and seeded loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from transformers import BertTokenizerFast

from monteclora_pyro.data import TASKS, Task, make_collator, make_loader, tokenize_task

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "is", "good", "bad", '"']


@pytest.fixture
def tokenizer(tmp_path: Path) -> BertTokenizerFast:
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(tmp_path)


def make_task(name: str, texts: list[str], labels: list[Any], pair: bool) -> Task:
    columns: dict[str, list[Any]] = {"text_a": texts, "label": labels}
    if pair:
        columns["text_b"] = ["bad"] * len(texts)
    return Task(spec=TASKS[name], splits={"train": datasets.Dataset.from_dict(columns)})


def test_tokenize_truncates_without_padding(tokenizer: BertTokenizerFast) -> None:
    task = make_task("sst2", ["good", "the movie is good", "good " * 20], [1, 1, 0], pair=False)
    tokenized = tokenize_task(task, tokenizer, max_length=6)["train"]
    expected_columns = {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert set(tokenized.column_names) == expected_columns
    assert [len(ids) for ids in tokenized["input_ids"]] == [3, 6, 6]
    assert tokenized["input_ids"][1] == [2, 5, 6, 7, 8, 3]
    assert tokenized["input_ids"][2][-1] == tokenizer.sep_token_id
    assert tokenized["labels"] == [1, 1, 0]
    assert tokenized.features["labels"].dtype == "int64"


def test_collator_pads_to_longest_in_batch(tokenizer: BertTokenizerFast) -> None:
    task = make_task("rte", ['the "', "the movie is good", "good"], [0, 1, 1], pair=True)
    tokenized = tokenize_task(task, tokenizer)["train"]
    batch = make_collator(tokenizer)([tokenized[0], tokenized[2]])
    assert batch["input_ids"].shape == (2, 6)
    assert batch["input_ids"][1].tolist() == [2, 8, 3, 9, 3, 0]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1] * 5 + [0]]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1]
    assert batch["labels"].tolist() == [0, 1] and batch["labels"].dtype == torch.int64
    full = make_collator(tokenizer)([tokenized[i] for i in range(3)])
    assert full["input_ids"].shape == (3, 8)


def test_regression_labels_are_float(tokenizer: BertTokenizerFast) -> None:
    task = make_task("stsb", ["good", "bad"], [4.5, 0.25], pair=True)
    tokenized = tokenize_task(task, tokenizer)["train"]
    batch = make_collator(tokenizer)([tokenized[0], tokenized[1]])
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [4.5, 0.25]


def test_loader_order_is_seeded(tokenizer: BertTokenizerFast) -> None:
    task = make_task("sst2", ["good"] * 32, list(range(32)), pair=False)
    tokenized = tokenize_task(task, tokenizer)["train"]
    collator = make_collator(tokenizer)

    def order(seed: int, shuffle: bool = True) -> list[int]:
        loader = make_loader(tokenized, collator, batch_size=5, shuffle=shuffle, seed=seed)
        return torch.cat([batch["labels"] for batch in loader]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(32))
    assert order(1, shuffle=False) == list(range(32))
