"""Tests for the prompt formats: packaged and registered tasks, tokenisation and batches."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
from conftest import task_words, word_tokenizer

from monteclora_pyro.data import (
    TASKS,
    DataError,
    LocalLayout,
    Task,
    TaskSpec,
    encode_pair,
    fit_length,
    get_task_spec,
    load_task,
    make_collator,
    register_task,
    registry,
    tokenize_causal_task,
    tokenize_task,
)
from monteclora_pyro.models.likelihood import IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(task_words())


# --- packaged and registered tasks -------------------------------------------------------------


def test_packaged_multiple_choice_task():
    task = load_task("mc-commonsense")
    assert task.spec is TASKS["mc-commonsense"]
    assert (task.spec.format, task.spec.likelihood) == ("choices", "multiple_choice")
    assert {split: len(ds) for split, ds in task.splits.items()} == {"train": 88, "validation": 40}
    questions = [q for ds in task.splits.values() for q in ds["question"]]
    assert len(set(questions)) == len(questions)
    for dataset in task.splits.values():
        for row in dataset:
            assert 2 <= len(row["choices"]) <= 4 and 0 <= row["label"] < len(row["choices"])
    sizes = Counter(len(c) for ds in task.splits.values() for c in ds["choices"])
    assert set(sizes) == {2, 3, 4}
    labels = Counter(task.splits["validation"]["label"])
    assert max(labels.values()) <= 20  # the right answer is not always in the same place


def test_packaged_instruction_task():
    task = load_task("tiny-instruct", data_dir="/nonexistent")  # packaged: data_dir unused
    assert (task.spec.format, task.spec.likelihood) == ("instruction", "next_token")
    assert {split: len(ds) for split, ds in task.splits.items()} == {"train": 30, "validation": 10}
    assert task.splits["train"][0] == {
        "prompt": "What color is the sky on a clear day?",
        "response": "The sky is blue on a clear day.",
    }


def test_registered_multiple_choice_task_reads_jsonl_from_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "TASKS", dict(registry.TASKS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    spec = TaskSpec(
        name="toy-piqa",
        text_fields=("question",),
        num_labels=2,
        label_names=("A", "B"),
        metrics=(),
        is_regression=False,
        likelihood="multiple_choice",
        format="choices",
        layout=LocalLayout(
            folder="PIQA",
            file_format="jsonl",
            split_files=(("all", "piqa.jsonl"),),
            columns=(("question", "question"), ("choices", "choices"), ("label", "label")),
        ),
    )
    assert register_task(spec) is spec and get_task_spec("Toy-PIQA") is spec
    (tmp_path / "PIQA").mkdir()
    rows = [
        {
            "split": "train",
            "question": "To dry a wet towel,",
            "choices": ["hang it", "bury it"],
            "label": 0,
        },
        {
            "split": "validation",
            "question": "To cool tea,",
            "choices": ["wait", "boil it"],
            "label": 0,
        },
        {
            "split": "train",
            "question": "To open a jar,",
            "choices": ["freeze it", "twist the lid"],
            "label": 1,
        },
    ]
    (tmp_path / "PIQA" / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task("toy-piqa", data_dir=tmp_path)
    assert task.splits["train"]["label"] == [0, 1] and len(task.splits["validation"]) == 1
    with pytest.raises(DataError, match=r"reads PIQA/piqa.jsonl from a data directory"):
        load_task("toy-piqa")
    rows[0]["choices"] = ["hang it", "hang it"]
    (tmp_path / "PIQA" / "piqa.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(DataError, match=r"line 1: 'choices' must be 2 to 2 distinct"):
        load_task("toy-piqa", data_dir=tmp_path)
    with pytest.raises(ValueError, match="a different task named 'toy-piqa'"):
        register_task(dataclasses.replace(spec, num_labels=3))


# --- tokenisation and batches ------------------------------------------------------------------


def test_choice_tokenisation_marks_exactly_the_answer(tokenizer):
    task = load_task("mc-commonsense")
    rows = tokenize_causal_task(task, tokenizer, max_length=64)["validation"]
    raw = task.splits["validation"]
    for i in range(5):
        row, example = rows[i], raw[i]
        assert (
            len(row["input_ids"]) == len(example["choices"]) and row["labels"] == example["label"]
        )
        context = tokenizer(f"Question: {example['question']}\nAnswer:")["input_ids"]
        for c, choice in enumerate(example["choices"]):
            answer = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            assert row["input_ids"][c] == context + answer
            assert row["answer_mask"][c] == [0] * len(context) + [1] * len(answer)
            assert row["attention_mask"][c] == [1] * (len(context) + len(answer))


def test_instruction_tokenisation_masks_the_prompt_and_ends_with_eos(tokenizer):
    task = load_task("tiny-instruct")
    row = tokenize_causal_task(task, tokenizer, max_length=64)["train"][1]
    context = tokenizer("Instruction: What is 2 plus 3?\nResponse:")["input_ids"]
    response = tokenizer(" 2 plus 3 is 5.", add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == context + response + [tokenizer.eos_token_id]
    assert row["labels"] == [IGNORE_INDEX] * len(context) + response + [tokenizer.eos_token_id]


def test_tokenize_task_is_the_plain_template_and_text_tasks_are_refused(tokenizer):
    for name in ("mc-commonsense", "tiny-instruct"):
        task = load_task(name, max_examples=4)
        plain = tokenize_causal_task(task, tokenizer, max_length=16)
        assert {s: ds.to_dict() for s, ds in tokenize_task(task, tokenizer, 16).items()} == {
            s: ds.to_dict() for s, ds in plain.items()
        }
    task = load_task("mc-commonsense", max_examples=1)
    text_task = Task(TASKS["sst2"], task.splits)
    with pytest.raises(ValueError, match=r"task sst2 has the format 'text', not a causal-LM"):
        tokenize_causal_task(text_task, tokenizer)
    with pytest.raises(ValueError, match=r"format 'text', not a causal-LM prompt format \("):
        encode_pair(tokenizer, "Q", "A", "text")


def test_truncation_cuts_the_context_from_the_left():
    assert fit_length([1, 2, 3, 4], [5, 6], 10) == ([1, 2, 3, 4], [5, 6], False)
    assert fit_length([1, 2, 3, 4], [5, 6], 4) == ([3, 4], [5, 6], True)
    assert fit_length([1, 2, 3, 4], [5, 6, 7, 8, 9], 3) == ([4], [5, 6], True)
    with pytest.raises(ValueError, match="max_length=1 is too small"):
        fit_length([1], [2], 1)


def test_chat_template_answer_is_the_assistant_turn():
    tokenizer = word_tokenizer(["user", "assistant", "Q", "A", "<", ">", "end", "?"])
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <end> {% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}"
    )
    context, answer = encode_pair(tokenizer, "Q ?", "A", "choices", template="chat")
    assert tokenizer.decode(context) == "< user > Q ? < end > < assistant >"
    assert tokenizer.decode(answer) == "A < end >"
    with pytest.raises(ValueError, match="template='fancy' is invalid"):
        encode_pair(tokenizer, "Q", "A", "choices", template="fancy")


def test_choice_collator_pads_choices_and_tokens(tokenizer):
    spec = TASKS["mc-commonsense"]
    task = load_task("mc-commonsense")
    tokenized = tokenize_causal_task(task, tokenizer, max_length=64)["train"]
    sizes = [len(c) for c in task.splits["train"]["choices"]]
    picked = [sizes.index(2), sizes.index(4)]
    batch = make_collator(tokenizer, spec)([tokenized[i] for i in picked])
    longest = max(len(s) for i in picked for s in tokenized[i]["input_ids"])
    assert batch["input_ids"].shape == (2, 4, longest) == batch["answer_mask"].shape
    assert batch["choice_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [tokenized[i]["labels"] for i in picked]
    first = tokenized[picked[0]]["input_ids"][0]
    assert batch["input_ids"][0, 0, : len(first)].tolist() == first
    assert batch["input_ids"][0, 0, len(first) :].eq(tokenizer.pad_token_id).all()
    assert batch["attention_mask"][0, 2:].sum() == 0 and batch["answer_mask"][0, 2:].sum() == 0


def test_token_collator_pads_labels_with_ignore_index(tokenizer):
    task = load_task("tiny-instruct")
    tokenized = tokenize_causal_task(task, tokenizer, max_length=64)["train"]
    batch = make_collator(tokenizer, TASKS["tiny-instruct"])([tokenized[0], tokenized[2]])
    short = len(tokenized[2]["input_ids"])
    assert batch["labels"].shape == batch["input_ids"].shape == (2, len(tokenized[0]["input_ids"]))
    assert batch["labels"][1, short:].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"][1].tolist() == [1] * short + [0] * (
        batch["labels"].shape[1] - short
    )
