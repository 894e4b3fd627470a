"""The text format: one or two texts and a class id or score, for sequence classifiers.

Rows have columns ``text_a``, optionally ``text_b``, and ``label`` (``int64`` class ids, or
``float32`` scores when ``TaskSpec.is_regression``). They are tokenised as a single text or a
text pair and padded to the longest sequence of each batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import datasets
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from monteclora_pyro.data.spec import Collator, DataError, DataFormat, Task, TaskSpec


class TextFormat(DataFormat):
    """Classification and regression rows: ``text_a``, optional ``text_b`` and ``label``."""

    name = "text"

    def check_spec(self, spec: TaskSpec) -> None:
        """Check that ``spec`` has one or two text fields, all mapped by its layout."""
        if not 1 <= len(spec.text_fields) <= 2:
            raise ValueError(f"task {spec.name}: the text format takes one or two text fields")
        if spec.packaged:
            raise ValueError(f"task {spec.name}: packaged files are read in prompt formats only")
        mapped = {col for col, _ in spec.layout.columns}
        needed = [*spec.text_fields, *filter(None, [spec.prefix_field]), "label"]
        missing = [col for col in needed if col not in mapped]
        if missing:
            raise ValueError(
                f"task {spec.name}: layout.columns does not map {', '.join(map(repr, missing))}"
            )

    def build(
        self,
        spec: TaskSpec,
        source: str,
        columns: Mapping[str, list[Any]],
        rows: list[int],
        unit: str,
    ) -> datasets.Dataset:
        """Validate the labels of raw ``columns`` and build the canonical dataset.

        ``rows`` gives the line (or row) number of each entry and ``unit`` its name (``"line"``
        or ``"row"``), used with ``source`` in error messages. Rows whose label is a VADER
        rating between the thresholds are dropped.
        """
        labels: list[Any] = []
        keep: list[int] = []
        for position, (raw, row) in enumerate(zip(columns["label"], rows, strict=True)):
            label = _parse_label(spec, raw, f"{source}, {unit} {row}")
            if label is not None:
                labels.append(label)
                keep.append(position)
        if not keep:
            raise DataError(f"{source}: no labelled examples (empty split)")
        texts = [[str(columns[field][i]) for i in keep] for field in spec.text_fields]
        if spec.prefix_field is not None:
            prefixes = columns[spec.prefix_field]
            texts[0] = [f"{prefixes[i]}: {text}" for i, text in zip(keep, texts[0], strict=True)]
        data: dict[str, list[Any]] = dict(zip(("text_a", "text_b"), texts, strict=False))
        data["label"] = labels
        features = datasets.Features(
            {
                **{col: datasets.Value("string") for col in data if col != "label"},
                "label": datasets.Value(_label_dtype(spec)),
            }
        )
        return datasets.Dataset.from_dict(data, features=features)

    def tokenize(
        self, task: Task, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, datasets.Dataset]:
        """Tokenise the text (pair) of each row; columns are the tokenizer's and ``labels``."""

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            pair = (batch["text_b"],) if "text_b" in batch else ()
            encoded = tokenizer(batch["text_a"], *pair, truncation=True, max_length=max_length)
            return {**encoded, "labels": batch["label"]}

        return {
            split: dataset.map(
                encode, batched=True, remove_columns=dataset.column_names, desc=f"tokenize {split}"
            ).cast_column("labels", datasets.Value(_label_dtype(task.spec)))
            for split, dataset in task.splits.items()
        }

    def collator(
        self, tokenizer: PreTrainedTokenizerBase, spec: TaskSpec | None = None
    ) -> Collator:
        """Pad each batch to its longest sequence, as torch tensors; ``spec`` is not needed."""
        return DataCollatorWithPadding(tokenizer, padding="longest", return_tensors="pt")


TEXT = TextFormat()


def _label_dtype(spec: TaskSpec) -> str:
    return "float32" if spec.is_regression else "int64"


def _parse_label(spec: TaskSpec, raw: Any, where: str) -> int | float | None:
    """Map a raw label to a class id (or score); ``None`` drops the row (VADER mid ratings)."""
    layout = spec.layout
    if layout.rating_threshold is not None:
        rating = _parse_float(raw, where)
        if rating >= layout.rating_threshold:
            return 1
        if rating <= -layout.rating_threshold:
            return 0
        return None
    if spec.is_regression:
        score = _parse_float(raw, where)
        if spec.score_range is not None:
            low, high = spec.score_range
            if not low <= score <= high:
                raise DataError(f"{where}: score {raw!r} outside the allowed range [{low}, {high}]")
        return score
    if isinstance(raw, bool):
        raw = "true" if raw else "false"
    elif isinstance(raw, int) and 0 <= raw < spec.num_labels:
        return raw
    if isinstance(raw, str) and raw.strip() in layout.label_values:
        return layout.label_values.index(raw.strip())
    allowed = ", ".join(map(repr, layout.label_values))
    raise DataError(f"{where}: label {raw!r} is not in the label set {{{allowed}}}")


def _parse_float(raw: Any, where: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: label {raw!r} is not a finite number")
    return value
