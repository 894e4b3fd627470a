"""The data formats by name, and tokenising and batching a task through its format."""

from __future__ import annotations

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from monteclora_pyro.data.prompts import CHOICES, DEFAULT_TEMPLATE, INSTRUCTION, PromptFormat
from monteclora_pyro.data.spec import Collator, DataFormat, Task, TaskSpec
from monteclora_pyro.data.text import TEXT

FORMATS: dict[str, DataFormat] = {fmt.name: fmt for fmt in (TEXT, CHOICES, INSTRUCTION)}


def data_format(spec: TaskSpec) -> DataFormat:
    """Return the format of ``spec`` (``FORMATS[spec.format]``).

    Raises
    ------
    ValueError
        If ``spec.format`` is not a key of :data:`FORMATS`.
    """
    fmt = FORMATS.get(spec.format)
    if fmt is None:
        raise ValueError(
            f"task {spec.name}: format={spec.format!r} is invalid: allowed values are "
            f"{', '.join(map(repr, FORMATS))}"
        )
    return fmt


def prompt_format(name: str, task_name: str | None = None) -> PromptFormat:
    """Return the prompt format called ``name``; ``task_name`` is named in error messages.

    Raises
    ------
    ValueError
        If ``name`` is not a prompt format (a causal-LM format).
    """
    fmt = FORMATS.get(name)
    if isinstance(fmt, PromptFormat):
        return fmt
    prompts = [key for key, value in FORMATS.items() if isinstance(value, PromptFormat)]
    owner = f"task {task_name} has the format" if task_name is not None else "format"
    raise ValueError(
        f"{owner} {name!r}, not a causal-LM prompt format ({', '.join(map(repr, prompts))})"
    )


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    answer: str,
    format_name: str,
    template: str = DEFAULT_TEMPLATE,
) -> tuple[list[int], list[int]]:
    """Token ids of a context and of its continuation in the prompt format ``format_name``.

    See :meth:`PromptFormat.encode_pair`; ``format_name`` is ``"choices"`` or
    ``"instruction"`` (whose plain-template answers end with the EOS token).
    """
    return prompt_format(format_name).encode_pair(tokenizer, context, answer, template)


def tokenize_task(
    task: Task, tokenizer: PreTrainedTokenizerBase, max_length: int = 128
) -> dict[str, datasets.Dataset]:
    """Tokenize every split with truncation to ``max_length`` and no padding.

    Returns
    -------
    dict of str to datasets.Dataset
        Splits as the task's format writes them: for the text format the tokenizer's outputs
        (``input_ids``, ``attention_mask`` and ``token_type_ids`` when produced) and
        ``labels``; prompt formats as :func:`tokenize_causal_task` with the plain template.
    """
    return data_format(task.spec).tokenize(task, tokenizer, max_length)


def tokenize_causal_task(
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 128,
    template: str = DEFAULT_TEMPLATE,
) -> dict[str, datasets.Dataset]:
    """Tokenise every split of a prompt-format task (no padding) with ``template``.

    Multiple choice gives per example ``input_ids``, ``attention_mask`` and ``answer_mask``
    (one list per choice) and ``labels``; instruction gives ``input_ids``, ``attention_mask``
    and ``labels`` (``-100`` on the prompt).
    """
    fmt = prompt_format(task.spec.format, task.spec.name)
    return fmt.tokenize(task, tokenizer, max_length, template)


def make_collator(tokenizer: PreTrainedTokenizerBase, spec: TaskSpec | None = None) -> Collator:
    """Return the collator of the format of ``spec``, padding each batch as torch tensors.

    Without ``spec``, the text format's: padding to the longest sequence of the batch.
    """
    if spec is None:
        return TEXT.collator(tokenizer)
    return data_format(spec).collator(tokenizer, spec)


def make_loader(
    dataset: datasets.Dataset,
    collator: Collator,
    batch_size: int,
    shuffle: bool,
    seed: int,
) -> DataLoader:
    """Return a DataLoader whose shuffling is driven by a ``torch.Generator`` seeded by ``seed``.

    Each pass over a shuffled loader draws from the generator, so successive epochs differ but
    the whole sequence is fixed by ``seed``. To make epoch ``e`` reproducible on its own (e.g.
    when resuming), build its loader with ``seed + e`` (or call
    ``loader.generator.manual_seed(seed + e)`` before iterating).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collator,
        generator=generator,
    )
