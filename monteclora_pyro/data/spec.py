"""The types every data module shares: task descriptions, loaded tasks and the format interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import datasets
import torch
from transformers import PreTrainedTokenizerBase

ColumnRef = str | int
Collator = Callable[[list[dict[str, Any]]], Mapping[str, torch.Tensor]]


class DataError(ValueError):
    """Raised when task data on disk is missing or malformed."""


@dataclass(frozen=True)
class LocalLayout:
    """How a task is stored in a local directory (or, for VADER domains, in the archive).

    Attributes
    ----------
    folder : str
        Task folder under the data root, e.g. ``"RTE"``.
    file_format : str
        ``"tsv"`` (tab-separated, no quoting) or ``"jsonl"`` (one JSON object per line).
    split_files : tuple of (str, str)
        ``(canonical split, file name)`` pairs, e.g. ``("validation", "dev.tsv")``.
    columns : tuple of (str, str or int)
        ``(canonical column, source column)`` pairs; the source column is a header name, or a
        0-based field index when ``num_fields`` is set (header-less file). The canonical
        columns are the task's text fields, its ``prefix_field`` if any, and ``"label"``.
    label_values : tuple of str
        Raw label values as written in the files, in class-id order (JSON booleans are
        written ``"false"``/``"true"``). Empty for regression and rating-thresholded tasks.
    num_fields : int or None
        Fields per line of a header-less TSV file; ``None`` when the first line is a header.
    rating_threshold : float or None
        When set, the label column is a mean rating: ``>= t`` gives class 1, ``<= -t`` class 0
        and rows in between are dropped.
    resplit : tuple of (str, float)
        When set, the rows of the (single) source file are split into these canonical splits
        with these fractions, using a fixed-seed permutation.
    """

    folder: str
    file_format: str
    split_files: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, ColumnRef], ...]
    label_values: tuple[str, ...] = ()
    num_fields: int | None = None
    rating_threshold: float | None = None
    resplit: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a supported task.

    Attributes
    ----------
    name : str
        Canonical task name, a key of :data:`~monteclora_pyro.data.TASKS`.
    text_fields : tuple of str
        One or two text columns of the canonical (hub) dataset; they become ``text_a`` and
        ``text_b``.
    num_labels : int
        Number of classes, 1 for regression; for multiple choice the largest number of choices
        of a question.
    label_names : tuple of str
        Class names in id order (the hub's names); ``()`` for regression.
    metrics : tuple of str
        Task-specific metrics reported on top of the loss and accuracy.
    is_regression : bool
        Whether the label is a real-valued score.
    layout : LocalLayout
        How to read the task from a local directory.
    hub_id : tuple of str or None
        Arguments of :func:`datasets.load_dataset`; ``None`` when the task is not on the hub.
    hub_splits : tuple of (str, str)
        ``(canonical split, hub split)`` pairs read from the hub.
    prefix_field : str or None
        Column whose value is prepended to ``text_a`` as ``"{value}: {text_a}"`` (the target
        word of WiC).
    score_range : tuple of float or None
        Allowed closed range of regression scores.
    likelihood : str
        Name of the likelihood the model puts on the task, a key of the model-side registry
        (:mod:`monteclora_pyro.models.likelihood`): ``"classification"``,
        ``"multiple_choice"`` or ``"next_token"``. The data package never reads it.
    format : str
        Name of the data format, a key of :data:`~monteclora_pyro.data.FORMATS`: ``"text"``,
        ``"choices"`` or ``"instruction"``.
    packaged : bool
        The data ship inside the package (``monteclora_pyro/resources/``, the files of
        ``layout.split_files``); ``data_dir`` is not consulted. A prompt-format task that is
        not packaged reads the same JSONL format from ``data_dir/layout.folder``.
    """

    name: str
    text_fields: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    is_regression: bool
    layout: LocalLayout
    hub_id: tuple[str, ...] | None = None
    hub_splits: tuple[tuple[str, str], ...] = (("train", "train"), ("validation", "validation"))
    prefix_field: str | None = None
    score_range: tuple[float, float] | None = None
    likelihood: str = "classification"
    format: str = "text"
    packaged: bool = False


@dataclass
class Task:
    """A loaded task: its spec and its canonical splits."""

    spec: TaskSpec
    splits: dict[str, datasets.Dataset]


class DataFormat(ABC):
    """How the rows of a task become model inputs; one subclass per data format.

    Attributes
    ----------
    name : str
        The format's key in :data:`~monteclora_pyro.data.FORMATS` (``TaskSpec.format``).
    """

    name: ClassVar[str]

    @abstractmethod
    def check_spec(self, spec: TaskSpec) -> None:
        """Raise ``ValueError`` if ``spec`` cannot be read in this format."""

    @abstractmethod
    def tokenize(
        self, task: Task, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, datasets.Dataset]:
        """Tokenise every split of ``task`` to at most ``max_length`` tokens, without padding."""

    @abstractmethod
    def collator(self, tokenizer: PreTrainedTokenizerBase, spec: TaskSpec) -> Collator:
        """Return the function that pads tokenised rows of ``spec`` into a batch of tensors."""
