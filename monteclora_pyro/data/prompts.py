"""Prompt formats for causal language models: multiple choice and instruction (next-token).

- ``"choices"`` (:class:`ChoicesFormat`): rows ``question``, ``choices`` (2 or more strings)
  and ``label`` (the index of the right choice). Each choice becomes a (context + answer)
  token sequence; a batch holds ``input_ids``, ``attention_mask`` and ``answer_mask`` of shape
  (batch, C, L), ``choice_mask`` (batch, C) and ``labels`` (batch,), where C is the task's
  ``num_labels`` (the most choices of a question; shorter questions are padded and masked).
- ``"instruction"`` (:class:`InstructionFormat`): rows ``prompt`` and ``response``. A batch
  holds ``input_ids`` and ``attention_mask`` (batch, L) and ``labels`` (batch, L): the token ids
  on response tokens and ``-100`` elsewhere (Hugging Face's convention; the model shifts them).

Prompt templates: ``"plain"`` (``Question: ...\\nAnswer: ...``, or ``Instruction: ...\\n
Response: ...``), or ``"chat"``, the tokenizer's chat template with the question or prompt as
the user turn and the answer or response as the assistant turn. Sequences are right-padded.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from monteclora_pyro.data.spec import Collator, DataError, DataFormat, Task, TaskSpec
from monteclora_pyro.models.likelihood import IGNORE_INDEX

logger = logging.getLogger(__name__)

TEMPLATES = ("plain", "chat")
DEFAULT_TEMPLATE = "plain"
PLAIN_QUESTION = "Question: {question}\nAnswer:"
PLAIN_INSTRUCTION = "Instruction: {prompt}\nResponse:"


class PromptFormat(DataFormat):
    """Rows read from JSONL records that name their split, tokenised as context + answer.

    Attributes
    ----------
    context_field : str
        The column holding the context (the question or the prompt).
    plain : str
        The plain template of the context, with a ``{context_field}`` placeholder.
    ends_with_eos : bool
        Whether a plain-template answer ends with the tokenizer's EOS token.
    """

    context_field: ClassVar[str]
    plain: ClassVar[str]
    ends_with_eos: ClassVar[bool]

    def check_spec(self, spec: TaskSpec) -> None:
        """Check that ``spec`` names exactly one JSONL file (its rows name their split)."""
        if len(spec.layout.split_files) != 1:
            raise ValueError(
                f"task {spec.name}: the {self.name} format reads one JSONL file whose rows "
                "name their split: layout.split_files must hold one (split, file) pair"
            )

    @abstractmethod
    def features(self, spec: TaskSpec) -> datasets.Features:
        """The columns of a loaded split."""

    @abstractmethod
    def check_row(self, spec: TaskSpec, record: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Validate one JSONL record; return its columns or raise :class:`DataError`."""

    @abstractmethod
    def encode_row(
        self, tokenizer: PreTrainedTokenizerBase, example: dict, max_length: int, template: str
    ) -> tuple[dict[str, Any], bool]:
        """Tokenise one row; return its columns and whether anything was truncated."""

    def encode_pair(
        self,
        tokenizer: PreTrainedTokenizerBase,
        context: str,
        answer: str,
        template: str = DEFAULT_TEMPLATE,
    ) -> tuple[list[int], list[int]]:
        """Token ids of a context and of its continuation, tokenised separately.

        The split point is exact: the answer's tokens are those the model is scored (or
        trained) on. With the chat template the answer is everything the assistant turn adds
        (its end marker included).
        """
        if template == "chat":
            return _chat_pair(tokenizer, context, answer)
        if template != "plain":
            raise ValueError(f"template={template!r} is invalid: allowed values are {TEMPLATES}")
        context_ids = tokenizer(self.plain.format_map({self.context_field: context}))["input_ids"]
        answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        if self.ends_with_eos and tokenizer.eos_token_id is not None:
            answer_ids = [*answer_ids, tokenizer.eos_token_id]
        return context_ids, answer_ids

    def tokenize(
        self,
        task: Task,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        template: str = DEFAULT_TEMPLATE,
    ) -> dict[str, datasets.Dataset]:
        """Tokenise every split with ``template``, logging how many rows were truncated."""
        out = {}
        for split, dataset in task.splits.items():
            rows, cut = [], 0
            for example in dataset:
                row, truncated = self.encode_row(tokenizer, example, max_length, template)
                rows.append(row)
                cut += truncated
            if cut:
                logger.warning(
                    "%s/%s: %d of %d examples truncated to max_length=%d "
                    "(context cut from the left)",
                    task.spec.name,
                    split,
                    cut,
                    len(rows),
                    max_length,
                )
            columns = {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
            out[split] = datasets.Dataset.from_dict(columns)
        return out


class ChoicesFormat(PromptFormat):
    """Multiple-choice rows ``question``, ``choices`` and ``label`` (the right choice)."""

    name = "choices"
    context_field = "question"
    plain = PLAIN_QUESTION
    ends_with_eos = False

    def check_spec(self, spec: TaskSpec) -> None:
        """Also check that ``spec.num_labels``, the most choices of a question, is >= 2."""
        super().check_spec(spec)
        if spec.num_labels < 2:
            raise ValueError(
                f"task {spec.name}: num_labels={spec.num_labels} must be the largest number "
                "of choices of a question, at least 2"
            )

    def features(self, spec: TaskSpec) -> datasets.Features:
        """``question`` (string), ``choices`` (strings) and ``label`` (int64)."""
        return datasets.Features(
            {
                "question": datasets.Value("string"),
                "choices": datasets.Sequence(datasets.Value("string")),
                "label": datasets.Value("int64"),
            }
        )

    def check_row(self, spec: TaskSpec, record: Mapping[str, Any], where: str) -> dict[str, Any]:
        """2 to ``spec.num_labels`` distinct non-empty choices, a label indexing them."""
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
        return {"question": _text(record, "question", where), "choices": choices, "label": label}

    def encode_row(
        self, tokenizer: PreTrainedTokenizerBase, example: dict, max_length: int, template: str
    ) -> tuple[dict[str, Any], bool]:
        """One (context + answer) sequence per choice, with its answer mask."""
        ids, attention, answers, cut = [], [], [], False
        for choice in example["choices"]:
            context, answer = self.encode_pair(tokenizer, example["question"], choice, template)
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

    def collator(self, tokenizer: PreTrainedTokenizerBase, spec: TaskSpec) -> Collator:
        """Pad to (batch, ``spec.num_labels``, longest sequence)."""
        return choice_collator(pad_token_id(tokenizer), spec.num_labels)


class InstructionFormat(PromptFormat):
    """Instruction rows ``prompt`` and ``response``; the response tokens are the labels."""

    name = "instruction"
    context_field = "prompt"
    plain = PLAIN_INSTRUCTION
    ends_with_eos = True

    def features(self, spec: TaskSpec) -> datasets.Features:
        """``prompt`` and ``response`` (strings)."""
        return datasets.Features(
            {"prompt": datasets.Value("string"), "response": datasets.Value("string")}
        )

    def check_row(self, spec: TaskSpec, record: Mapping[str, Any], where: str) -> dict[str, Any]:
        """A non-empty prompt and response."""
        return {key: _text(record, key, where) for key in ("prompt", "response")}

    def encode_row(
        self, tokenizer: PreTrainedTokenizerBase, example: dict, max_length: int, template: str
    ) -> tuple[dict[str, Any], bool]:
        """One (prompt + response) sequence; labels are ``-100`` on the prompt."""
        context, answer = self.encode_pair(
            tokenizer, example["prompt"], example["response"], template
        )
        context, answer, cut = fit_length(context, answer, max_length)
        row = {
            "input_ids": context + answer,
            "attention_mask": [1] * (len(context) + len(answer)),
            "labels": [IGNORE_INDEX] * len(context) + answer,
        }
        return row, cut

    def collator(self, tokenizer: PreTrainedTokenizerBase, spec: TaskSpec) -> Collator:
        """Right-pad to the longest sequence; padded labels are ``-100``."""
        return token_collator(pad_token_id(tokenizer))


CHOICES = ChoicesFormat()
INSTRUCTION = InstructionFormat()


def _text(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: {key!r} must be a non-empty string")
    return value


def _chat_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, answer: str
) -> tuple[list[int], list[int]]:
    """Context and answer ids under the tokenizer's chat template (user, then assistant)."""
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
