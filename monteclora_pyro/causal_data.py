"""Data for causal language models: packaged tasks, prompt templates, tokenisation, batching.

Two kinds of task (``TaskSpec.kind``):

- ``"multiple_choice"``: rows ``question``, ``choices`` (2 or more strings) and ``label`` (the
  index of the right choice). Each choice becomes a (context + answer) token sequence; a batch
  holds ``input_ids``, ``attention_mask`` and ``answer_mask`` of shape (batch, C, L),
  ``choice_mask`` (batch, C) and ``labels`` (batch,), where C is the task's ``num_labels`` (the
  most choices of a question; shorter questions are padded and masked).
- ``"next_token"``: rows ``prompt`` and ``response``. A batch holds ``input_ids`` and
  ``attention_mask`` (batch, L) and ``labels`` (batch, L): the token ids on response tokens and
  ``-100`` elsewhere (Hugging Face's convention; the model shifts them).

Prompt templates: ``"plain"`` (``Question: ...\\nAnswer: ...``, or ``Instruction: ...\\n
Response: ...``), or ``"chat"``, the tokenizer's chat template with the question or prompt as
the user turn and the answer or response as the assistant turn. Sequences are right-padded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from monteclora_pyro.data import Collator, DataError, Task, TaskSpec
from monteclora_pyro.models.likelihood import IGNORE_INDEX

logger = logging.getLogger(__name__)

RESOURCES = "resources"
TEMPLATES = ("plain", "chat")
DEFAULT_TEMPLATE = "plain"
PLAIN_QUESTION = "Question: {question}\nAnswer:"
PLAIN_INSTRUCTION = "Instruction: {prompt}\nResponse:"
CAUSAL_KINDS = ("multiple_choice", "next_token")


def packaged_path(file_name: str):
    """A file of ``monteclora_pyro/resources/`` (an importlib.resources traversable)."""
    return resources.files("monteclora_pyro").joinpath(RESOURCES, file_name)


def load_causal_splits(
    spec: TaskSpec, data_dir: str | os.PathLike[str] | None = None
) -> dict[str, datasets.Dataset]:
    """Read a multiple-choice or next-token task from JSONL; every row names its ``split``.

    Multiple-choice rows need ``question``, ``choices`` (2..``spec.num_labels`` distinct
    non-empty strings) and ``label``; next-token rows need ``prompt`` and ``response``.
    A packaged task is read from the package, any other from
    ``data_dir/{layout.folder}/{file}`` (or ``data_dir/{file}``).
    """
    if spec.kind not in CAUSAL_KINDS:
        raise ValueError(f"task {spec.name} is a {spec.kind} task, not a causal-LM task")
    ((_, file_name),) = spec.layout.split_files
    if spec.packaged:
        path = packaged_path(file_name)
        if not path.is_file():
            raise DataError(f"packaged file {path} is missing: reinstall monteclora-pyro")
    else:
        if data_dir is None:
            raise DataError(
                f"task {spec.name} reads {spec.layout.folder}/{file_name} from a data directory: "
                "pass data_dir (--data-dir) or set MONTECLORA_DATA"
            )
        root = Path(data_dir)
        path = root / spec.layout.folder / file_name
        if not path.is_file() and (root / file_name).is_file():
            path = root / file_name
        if not path.is_file():
            raise DataError(f"missing file {path} (JSONL rows with a 'split' field)")
    rows: dict[str, dict[str, list]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: invalid JSON ({err.msg})") from err
        split = record.get("split")
        if not isinstance(split, str) or not split:
            raise DataError(f"{where}: missing 'split'")
        row = _check_row(spec, record, where)
        columns = rows.setdefault(split, {key: [] for key in row})
        for key, value in row.items():
            columns[key].append(value)
    if not rows:
        raise DataError(f"{path}: no rows")
    features = _features(spec)
    return {split: datasets.Dataset.from_dict(c, features=features) for split, c in rows.items()}


def _features(spec: TaskSpec) -> datasets.Features:
    if spec.kind == "multiple_choice":
        return datasets.Features(
            {
                "question": datasets.Value("string"),
                "choices": datasets.Sequence(datasets.Value("string")),
                "label": datasets.Value("int64"),
            }
        )
    return datasets.Features(
        {"prompt": datasets.Value("string"), "response": datasets.Value("string")}
    )


def _check_row(spec: TaskSpec, record: Mapping[str, Any], where: str) -> dict[str, Any]:
    def text(key: str) -> str:
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: {key!r} must be a non-empty string")
        return value

    if spec.kind == "next_token":
        return {"prompt": text("prompt"), "response": text("response")}
    choices = record.get("choices")
    if (
        not isinstance(choices, list)
        or not 2 <= len(choices) <= spec.num_labels
        or not all(isinstance(c, str) and c.strip() for c in choices)
        or len(set(choices)) != len(choices)
    ):
        raise DataError(
            f"{where}: 'choices' must be 2 to {spec.num_labels} distinct non-empty strings"
        )
    label = record.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise DataError(f"{where}: 'label' must be a choice index 0..{len(choices) - 1}")
    return {"question": text("question"), "choices": choices, "label": label}


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    answer: str,
    kind: str,
    template: str = DEFAULT_TEMPLATE,
) -> tuple[list[int], list[int]]:
    """Token ids of a context and of its continuation, tokenised separately.

    The split point is exact: the answer's tokens are those the model is scored (or trained)
    on. With the plain template a next-token response ends with the tokenizer's EOS token;
    with the chat template the answer is everything the assistant turn adds (its end marker
    included).
    """
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' needs a tokenizer with a chat template")
        user = [{"role": "user", "content": context}]
        prefix = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": answer}], tokenize=False
        )
        if not full.startswith(prefix):
            raise ValueError("the chat template does not extend the prompt with the answer")
        context_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(full[len(prefix) :], add_special_tokens=False)["input_ids"]
        return context_ids, answer_ids
    if template != "plain":
        raise ValueError(f"template={template!r} is invalid: allowed values are {TEMPLATES}")
    if kind == "multiple_choice":
        context_text = PLAIN_QUESTION.format(question=context)
    else:
        context_text = PLAIN_INSTRUCTION.format(prompt=context)
    context_ids = tokenizer(context_text)["input_ids"]
    answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    if kind == "next_token" and tokenizer.eos_token_id is not None:
        answer_ids = [*answer_ids, tokenizer.eos_token_id]
    return context_ids, answer_ids


def fit_length(
    context: list[int], answer: list[int], max_length: int
) -> tuple[list[int], list[int], bool]:
    """Truncate to ``max_length`` tokens: the context from the left, then the answer's end.

    At least one context token and one answer token are kept. Returns the two parts and
    whether anything was cut.
    """
    if max_length < 2:
        raise ValueError(f"max_length={max_length} is too small: it must be >= 2")
    if not context or not answer:
        raise ValueError("the context and the answer must each have at least one token")
    if len(context) + len(answer) <= max_length:
        return context, answer, False
    answer = answer[: max_length - 1]
    return context[len(context) - (max_length - len(answer)) :], answer, True


def tokenize_causal_task(
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 128,
    template: str = DEFAULT_TEMPLATE,
) -> dict[str, datasets.Dataset]:
    """Tokenise every split of a multiple-choice or next-token task (no padding).

    Multiple choice gives per example ``input_ids``, ``attention_mask`` and ``answer_mask``
    (one list per choice) and ``labels``; next-token gives ``input_ids``, ``attention_mask``
    and ``labels`` (``-100`` on the prompt).
    """
    kind = task.spec.kind
    if kind not in CAUSAL_KINDS:
        raise ValueError(f"task {task.spec.name} is a {kind} task, not a causal-LM task")
    out = {}
    for split, dataset in task.splits.items():
        rows, cut = [], 0
        for example in dataset:
            if kind == "multiple_choice":
                row, truncated = _encode_choices(tokenizer, example, max_length, template)
            else:
                row, truncated = _encode_instruction(tokenizer, example, max_length, template)
            rows.append(row)
            cut += truncated
        if cut:
            logger.warning(
                "%s/%s: %d of %d examples truncated to max_length=%d (context cut from the left)",
                task.spec.name,
                split,
                cut,
                len(rows),
                max_length,
            )
        columns = {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
        out[split] = datasets.Dataset.from_dict(columns)
    return out


def _encode_choices(
    tokenizer: PreTrainedTokenizerBase, example: dict, max_length: int, template: str
) -> tuple[dict[str, Any], bool]:
    ids, attention, answers, cut = [], [], [], False
    for choice in example["choices"]:
        context, answer = encode_pair(
            tokenizer, example["question"], choice, "multiple_choice", template
        )
        context, answer, truncated = fit_length(context, answer, max_length)
        cut |= truncated
        ids.append(context + answer)
        attention.append([1] * (len(context) + len(answer)))
        answers.append([0] * len(context) + [1] * len(answer))
    row = {
        "input_ids": ids,
        "attention_mask": attention,
        "answer_mask": answers,
        "labels": example["label"],
    }
    return row, cut


def _encode_instruction(
    tokenizer: PreTrainedTokenizerBase, example: dict, max_length: int, template: str
) -> tuple[dict[str, Any], bool]:
    context, answer = encode_pair(
        tokenizer, example["prompt"], example["response"], "next_token", template
    )
    context, answer, cut = fit_length(context, answer, max_length)
    row = {
        "input_ids": context + answer,
        "attention_mask": [1] * (len(context) + len(answer)),
        "labels": [IGNORE_INDEX] * len(context) + answer,
    }
    return row, cut


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding: the pad token, else EOS, else 0 (always masked out)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def choice_collator(pad_id: int, num_choices: int) -> Collator:
    """Pad multiple-choice examples to (batch, ``num_choices``, longest sequence)."""

    def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        most = max(len(ex["input_ids"]) for ex in examples)
        if most > num_choices:
            raise ValueError(f"an example has {most} choices; the task allows {num_choices}")
        length = max(len(seq) for ex in examples for seq in ex["input_ids"])
        shape = (len(examples), num_choices, length)
        batch = {
            "input_ids": torch.full(shape, pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(shape, dtype=torch.long),
            "answer_mask": torch.zeros(shape, dtype=torch.long),
            "choice_mask": torch.zeros(shape[:2], dtype=torch.long),
        }
        for b, ex in enumerate(examples):
            for c, seq in enumerate(ex["input_ids"]):
                n = len(seq)
                batch["input_ids"][b, c, :n] = torch.as_tensor(seq)
                batch["attention_mask"][b, c, :n] = torch.as_tensor(ex["attention_mask"][c])
                batch["answer_mask"][b, c, :n] = torch.as_tensor(ex["answer_mask"][c])
                batch["choice_mask"][b, c] = 1
        batch["labels"] = torch.tensor([ex["labels"] for ex in examples], dtype=torch.long)
        return batch

    return collate


def token_collator(pad_id: int) -> Collator:
    """Right-pad next-token examples; padded labels are ``-100``."""

    def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(ex["input_ids"]) for ex in examples)
        shape = (len(examples), length)
        batch = {
            "input_ids": torch.full(shape, pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(shape, dtype=torch.long),
            "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        }
        for b, ex in enumerate(examples):
            for key in batch:
                batch[key][b, : len(ex[key])] = torch.as_tensor(ex[key])
        return batch

    return collate


def make_causal_collator(tokenizer: PreTrainedTokenizerBase, spec: TaskSpec) -> Collator:
    """The collator of a multiple-choice or next-token task."""
    if spec.kind == "multiple_choice":
        return choice_collator(pad_token_id(tokenizer), spec.num_labels)
    if spec.kind == "next_token":
        return token_collator(pad_token_id(tokenizer))
    raise ValueError(f"task {spec.name} is a {spec.kind} task, not a causal-LM task")
