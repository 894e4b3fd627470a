"""Task registry, dataset loading and batching.

Supported tasks are the GLUE tasks (cola, sst2, mrpc, rte, qnli, qqp, mnli, stsb, wnli), the
SuperGLUE tasks boolq and wic, and four sentiment domains built from the human-rated sentences
shipped in the ``vaderSentiment==3.2.1`` source distribution (Hutto & Gilbert, ICWSM 2014):
``movie-reviews`` (the default task, split 80/10/10) and the shifted domains ``tweets``,
``amazon`` and ``nyt`` (a single ``test`` split each). Two small sets shipped with the
package are for causal language models (:mod:`monteclora_pyro.causal_data`):
``mc-commonsense`` (multiple choice) and ``tiny-instruct`` (prompt/response pairs).

Every classification task loads into the same canonical form: a :class:`Task` whose splits are
:class:`datasets.Dataset` objects with columns ``text_a``, optionally ``text_b``, and ``label``
(``int64`` class ids, ``float32`` for regression). Multiple-choice tasks have columns
``question``, ``choices`` and ``label``; next-token tasks ``prompt`` and ``response``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DATA_ENV = "MONTECLORA_DATA"
CACHE_ENV = "MONTECLORA_CACHE"
VADER_REQUIREMENT = "vaderSentiment==3.2.1"
VADER_ARCHIVE = "vaderSentiment-3.2.1.tar.gz"
VADER_INNER_ARCHIVE = "vaderSentiment-3.2.1/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_DOWNLOAD_TIMEOUT_S = 600
SPLIT_SEED = 0

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
        Canonical task name, a key of :data:`TASKS`.
    text_fields : tuple of str
        One or two text columns of the canonical (hub) dataset; they become ``text_a`` and
        ``text_b``.
    num_labels : int
        Number of classes, 1 for regression.
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
    kind : {"classification", "multiple_choice", "next_token"}
        The likelihood the task needs (:mod:`monteclora_pyro.models.likelihood`). For
        multiple choice ``num_labels`` is the largest number of choices of a question.
    packaged : bool
        The data ship inside the package (``monteclora_pyro/resources/``, the files of
        ``layout.split_files``); ``data_dir`` is not consulted. A multiple-choice or next-token
        task that is not packaged reads the same JSONL format from ``data_dir/layout.folder``.
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
    kind: str = "classification"
    packaged: bool = False


@dataclass
class Task:
    """A loaded task: its spec and its canonical splits."""

    spec: TaskSpec
    splits: dict[str, datasets.Dataset]


_GLUE_FILES = (("train", "train.tsv"), ("validation", "dev.tsv"))
_SUPERGLUE_FILES = (("train", "train.jsonl"), ("validation", "val.jsonl"))
_BINARY = ("0", "1")
_BOOLEAN = ("false", "true")


def _vader_layout(file_name: str, resplit: tuple[tuple[str, float], ...] = ()) -> LocalLayout:
    split = "all" if resplit else "test"
    return LocalLayout(
        folder="hutto_ICWSM_2014",
        file_format="tsv",
        split_files=((split, file_name),),
        columns=(("text", 2), ("label", 1)),
        num_fields=3,
        rating_threshold=0.5,
        resplit=resplit,
    )


def _vader_spec(name: str, file_name: str, resplit: tuple[tuple[str, float], ...] = ()) -> TaskSpec:
    return TaskSpec(
        name=name,
        text_fields=("text",),
        num_labels=2,
        label_names=("negative", "positive"),
        metrics=(),
        is_regression=False,
        layout=_vader_layout(file_name, resplit),
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="cola",
            text_fields=("sentence",),
            num_labels=2,
            label_names=("unacceptable", "acceptable"),
            metrics=("mcc",),
            is_regression=False,
            hub_id=("glue", "cola"),
            layout=LocalLayout(
                folder="CoLA",
                file_format="tsv",
                split_files=_GLUE_FILES,
                columns=(("sentence", 3), ("label", 1)),
                label_values=_BINARY,
                num_fields=4,
            ),
        ),
        TaskSpec(
            name="sst2",
            text_fields=("sentence",),
            num_labels=2,
            label_names=("negative", "positive"),
            metrics=(),
            is_regression=False,
            hub_id=("glue", "sst2"),
            layout=LocalLayout(
                folder="SST-2",
                file_format="tsv",
                split_files=_GLUE_FILES,
                columns=(("sentence", "sentence"), ("label", "label")),
                label_values=_BINARY,
            ),
        ),
        TaskSpec(
            name="mrpc",
            text_fields=("sentence1", "sentence2"),
            num_labels=2,
            label_names=("not_equivalent", "equivalent"),
            metrics=("f1",),
            is_regression=False,
            hub_id=("glue", "mrpc"),
            layout=LocalLayout(
                folder="MRPC",
                file_format="tsv",
                split_files=_GLUE_FILES,
                columns=(
                    ("sentence1", "#1 String"),
                    ("sentence2", "#2 String"),
                    ("label", "Quality"),
                ),
                label_values=_BINARY,
            ),
        ),
        TaskSpec(
            name="rte",
            text_fields=("sentence1", "sentence2"),
            num_labels=2,
            label_names=("entailment", "not_entailment"),
            metrics=(),
            is_regression=False,
            hub_id=("glue", "rte"),
            layout=LocalLayout(
                folder="RTE",
                file_format="tsv",
                split_files=_GLUE_FILES,
                columns=(
                    ("sentence1", "sentence1"),
                    ("sentence2", "sentence2"),
                    ("label", "label"),
                ),
                label_values=("entailment", "not_entailment"),
            ),
        ),
        TaskSpec(
            name="qnli",
            text_fields=("question", "sentence"),
            num_labels=2,
            label_names=("entailment", "not_entailment"),
            metrics=(),
            is_regression=False,
            hub_id=("glue", "qnli"),
            layout=LocalLayout(
                folder="QNLI",
                file_format="tsv",
                split_files=_GLUE_FILES,
                columns=(("question", "question"), ("sentence", "sentence"), ("label", "label")),
                label_values=("entailment", "not_entailment"),
            ),
        ),
        TaskSpec(
            name="qqp",
            text_fields=("question1", "question2"),
            num_labels=2,
            label_names=("not_duplicate", "duplicate"),
            metrics=("f1",),
            is_regression=False,
            hub_id=("glue", "qqp"),
            layout=LocalLayout(
                folder="QQP",
                file_format="tsv",
                split_files=_GLUE_FILES,
                columns=(
                    ("question1", "question1"),
                    ("question2", "question2"),
                    ("label", "is_duplicate"),
                ),
                label_values=_BINARY,
            ),
        ),
        TaskSpec(
            name="mnli",
            text_fields=("premise", "hypothesis"),
            num_labels=3,
            label_names=("entailment", "neutral", "contradiction"),
            metrics=(),
            is_regression=False,
            hub_id=("glue", "mnli"),
            hub_splits=(("train", "train"), ("validation", "validation_matched")),
            layout=LocalLayout(
                folder="MNLI",
                file_format="tsv",
                split_files=(("train", "train.tsv"), ("validation", "dev_matched.tsv")),
                columns=(
                    ("premise", "sentence1"),
                    ("hypothesis", "sentence2"),
                    ("label", "gold_label"),
                ),
                label_values=("entailment", "neutral", "contradiction"),
            ),
        ),
        TaskSpec(
            name="stsb",
            text_fields=("sentence1", "sentence2"),
            num_labels=1,
            label_names=(),
            metrics=("pearson", "spearman"),
            is_regression=True,
            hub_id=("glue", "stsb"),
            score_range=(0.0, 5.0),
            layout=LocalLayout(
                folder="STS-B",
                file_format="tsv",
                split_files=_GLUE_FILES,
                columns=(
                    ("sentence1", "sentence1"),
                    ("sentence2", "sentence2"),
                    ("label", "score"),
                ),
            ),
        ),
        TaskSpec(
            name="wnli",
            text_fields=("sentence1", "sentence2"),
            num_labels=2,
            label_names=("not_entailment", "entailment"),
            metrics=(),
            is_regression=False,
            hub_id=("glue", "wnli"),
            layout=LocalLayout(
                folder="WNLI",
                file_format="tsv",
                split_files=_GLUE_FILES,
                columns=(
                    ("sentence1", "sentence1"),
                    ("sentence2", "sentence2"),
                    ("label", "label"),
                ),
                label_values=_BINARY,
            ),
        ),
        TaskSpec(
            name="boolq",
            text_fields=("question", "passage"),
            num_labels=2,
            label_names=("False", "True"),
            metrics=(),
            is_regression=False,
            hub_id=("super_glue", "boolq"),
            layout=LocalLayout(
                folder="BoolQ",
                file_format="jsonl",
                split_files=_SUPERGLUE_FILES,
                columns=(("question", "question"), ("passage", "passage"), ("label", "label")),
                label_values=_BOOLEAN,
            ),
        ),
        TaskSpec(
            name="wic",
            text_fields=("sentence1", "sentence2"),
            num_labels=2,
            label_names=("False", "True"),
            metrics=(),
            is_regression=False,
            hub_id=("super_glue", "wic"),
            prefix_field="word",
            layout=LocalLayout(
                folder="WiC",
                file_format="jsonl",
                split_files=_SUPERGLUE_FILES,
                columns=(
                    ("word", "word"),
                    ("sentence1", "sentence1"),
                    ("sentence2", "sentence2"),
                    ("label", "label"),
                ),
                label_values=_BOOLEAN,
            ),
        ),
        _vader_spec(
            "movie-reviews",
            "movieReviewSnippets_GroundTruth.txt",
            resplit=(("train", 0.8), ("validation", 0.1), ("test", 0.1)),
        ),
        _vader_spec("tweets", "tweets_GroundTruth.txt"),
        _vader_spec("amazon", "amazonReviewSnippets_GroundTruth.txt"),
        _vader_spec("nyt", "nytEditorialSnippets_GroundTruth.txt"),
        TaskSpec(
            name="mc-commonsense",
            text_fields=("question",),
            num_labels=4,
            label_names=("A", "B", "C", "D"),
            metrics=(),
            is_regression=False,
            kind="multiple_choice",
            packaged=True,
            layout=LocalLayout(
                folder="resources",
                file_format="jsonl",
                split_files=(("all", "mc_commonsense.jsonl"),),
                columns=(("question", "question"), ("choices", "choices"), ("label", "label")),
            ),
        ),
        TaskSpec(
            name="tiny-instruct",
            text_fields=("prompt", "response"),
            num_labels=0,
            label_names=(),
            metrics=(),
            is_regression=False,
            kind="next_token",
            packaged=True,
            layout=LocalLayout(
                folder="resources",
                file_format="jsonl",
                split_files=(("all", "tiny_instruct.jsonl"),),
                columns=(("prompt", "prompt"), ("response", "response")),
            ),
        ),
    )
}

DEFAULT_TASK = "movie-reviews"
SHIFT_DOMAINS = ("tweets", "amazon", "nyt")


def _alias_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_ALIASES = {_alias_key(name): name for name in TASKS}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS`, e.g. a multiple-choice set converted to JSONL.

    Raises
    ------
    ValueError
        If another task of the same name (or alias) is registered.
    """
    existing = _ALIASES.get(_alias_key(spec.name))
    if existing is not None and TASKS[existing] != spec:
        raise ValueError(f"a different task named {existing!r} is already registered")
    TASKS[spec.name] = spec
    _ALIASES[_alias_key(spec.name)] = spec.name
    return spec


def get_task_spec(name: str) -> TaskSpec:
    """Return the spec of a task, accepting aliases such as ``"SST-2"`` or ``"STS-B"``.

    Raises
    ------
    ValueError
        If the task is unknown; the message lists the known tasks.
    """
    canonical = _ALIASES.get(_alias_key(name))
    if canonical is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[canonical]


def load_task(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, max_examples: int | None = None
) -> Task:
    """Load a task's labelled splits in canonical form.

    GLUE/SuperGLUE data are read from ``data_dir``, else from ``$MONTECLORA_DATA``, else from
    the Hugging Face hub. The directory may be the data root (holding e.g. ``RTE/``) or the task
    folder itself. VADER domains are read from ``vaderSentiment-3.2.1.tar.gz`` in that
    directory if it is there, else from the cache (downloaded on first use, see
    :func:`fetch_vader_archive`).

    Parameters
    ----------
    name : str
        Task name or alias (see :data:`TASKS`).
    data_dir : path-like, optional
        Local data directory.
    max_examples : int, optional
        Keep only the first ``max_examples`` rows of each split.

    Returns
    -------
    Task
        The spec and the splits (``train``/``validation``/``test`` when present).
    """
    spec = get_task_spec(name)
    root = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or None
    if spec.packaged or spec.kind != "classification":
        from monteclora_pyro.causal_data import load_causal_splits

        splits = load_causal_splits(spec, root)
    elif spec.hub_id is None:
        archive = Path(root) / VADER_ARCHIVE if root is not None else None
        if archive is None or not archive.is_file():
            archive = fetch_vader_archive()
        splits = load_vader_splits(spec, archive)
    elif root is None:
        splits = _load_from_hub(spec, spec.hub_id)
    else:
        splits = _load_from_directory(spec, Path(root))
    if max_examples is not None:
        splits = {split: take_first(ds, max_examples) for split, ds in splits.items()}
    logger.info(
        "loaded task %s: %s",
        spec.name,
        ", ".join(f"{split}={len(ds)}" for split, ds in splits.items()),
    )
    return Task(spec=spec, splits=splits)


def take_first(dataset: datasets.Dataset, n: int) -> datasets.Dataset:
    """Return the first ``n`` rows of ``dataset`` (all of it if shorter)."""
    if n < 0:
        raise ValueError(f"max_examples must be non-negative, got {n}")
    return dataset.select(range(min(n, len(dataset))))


def expected_layout(spec: TaskSpec) -> str:
    """Describe the files a local data directory must hold for ``spec``."""
    files = " and ".join(f"{spec.layout.folder}/{file}" for _, file in spec.layout.split_files)
    kind = "GLUE TSV" if spec.layout.file_format == "tsv" else "SuperGLUE JSONL"
    return f"{files} (standard {kind} layout)"


def _load_from_hub(spec: TaskSpec, hub_id: tuple[str, ...]) -> dict[str, datasets.Dataset]:
    try:
        raw = datasets.load_dataset(*hub_id)
    except Exception as exc:
        raise RuntimeError(
            f"could not load task {spec.name!r} from the Hugging Face hub "
            f"({'/'.join(hub_id)}): {exc}. Pass --data-dir DIR or set {DATA_ENV}=DIR, "
            f"where DIR holds {expected_layout(spec)}."
        ) from exc
    needed = [col for col, _ in spec.layout.columns]
    splits = {}
    for split, hub_split in spec.hub_splits:
        source = f"hub dataset {'/'.join(hub_id)}[{hub_split}]"
        table = raw[hub_split]
        _check_columns(source, needed, table.column_names)
        columns = {col: list(table[col]) for col in needed}
        splits[split] = _build_dataset(spec, source, columns, list(range(len(table))), "row")
    return splits


def _resolve_task_dir(spec: TaskSpec, root: Path) -> Path:
    first_file = spec.layout.split_files[0][1]
    if (root / first_file).is_file():
        return root
    if root.is_dir():
        wanted = spec.layout.folder.lower()
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name.lower() == wanted:
                return child
    raise DataError(
        f"{root}: neither a {spec.layout.folder}/ folder nor {first_file} found; "
        f"{_describe_dir(root)}; expected {expected_layout(spec)}"
    )


def _describe_dir(directory: Path) -> str:
    if not directory.is_dir():
        return f"{directory} does not exist"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    return f"{directory} contains: {', '.join(entries) or '(nothing)'}"


def _load_from_directory(spec: TaskSpec, root: Path) -> dict[str, datasets.Dataset]:
    task_dir = _resolve_task_dir(spec, root)
    splits = {}
    for split, file_name in spec.layout.split_files:
        path = task_dir / file_name
        if not path.is_file():
            raise DataError(f"missing file {path}; {_describe_dir(task_dir)}")
        text = _decode(path.read_bytes(), str(path))
        if not text.strip():
            raise DataError(f"{path}: empty file (empty split {split!r})")
        if spec.layout.file_format == "jsonl":
            columns, lines = _parse_jsonl(text, str(path), spec.layout)
        else:
            columns, lines = _parse_tsv(text, str(path), spec.layout)
        splits[split] = _build_dataset(spec, str(path), columns, lines, "line")
    return splits


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not valid UTF-8 at byte {exc.start}") from exc


def _check_columns(source: str, needed: Sequence[str], present: Collection[str]) -> None:
    missing = [col for col in needed if col not in present]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; "
            f"columns present: {', '.join(map(repr, present))}"
        )


def _parse_tsv(
    text: str, source: str, layout: LocalLayout
) -> tuple[dict[str, list[Any]], list[int]]:
    """Split a TSV file into columns; fields are never quoted (``csv.QUOTE_NONE`` semantics).

    Rows whose field count differs from the header's (or from ``layout.num_fields``) are
    skipped with a warning, as the reference GLUE loaders do. Returns the columns and the
    1-based line number of each kept row.
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if layout.num_fields is None:
        header = lines[0].split("\t") if lines else []
        _check_columns(source, [str(ref) for _, ref in layout.columns], header)
        indices = {col: header.index(str(ref)) for col, ref in layout.columns}
        n_fields, first_row = len(header), 1
    else:
        indices = {col: int(ref) for col, ref in layout.columns}
        n_fields, first_row = layout.num_fields, 0
    columns: dict[str, list[Any]] = {col: [] for col in indices}
    kept: list[int] = []
    malformed: list[int] = []
    for number, line in enumerate(lines[first_row:], start=first_row + 1):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != n_fields:
            malformed.append(number)
            continue
        for col, index in indices.items():
            columns[col].append(fields[index])
        kept.append(number)
    if malformed:
        logger.warning(
            "%s: skipped %d line(s) without exactly %d tab-separated fields (lines %s%s)",
            source,
            len(malformed),
            n_fields,
            ", ".join(map(str, malformed[:10])),
            ", ..." if len(malformed) > 10 else "",
        )
    return columns, kept


def _parse_jsonl(
    text: str, source: str, layout: LocalLayout
) -> tuple[dict[str, list[Any]], list[int]]:
    columns: dict[str, list[Any]] = {col: [] for col, _ in layout.columns}
    kept: list[int] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}, line {number}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise DataError(f"{source}, line {number}: expected a JSON object")
        _check_columns(f"{source}, line {number}", [str(r) for _, r in layout.columns], record)
        for col, ref in layout.columns:
            columns[col].append(record[str(ref)])
        kept.append(number)
    return columns, kept


def _build_dataset(
    spec: TaskSpec, source: str, columns: Mapping[str, list[Any]], rows: list[int], unit: str
) -> datasets.Dataset:
    """Validate labels and build the canonical dataset.

    ``rows`` gives the line (or row) number of each entry, used in error messages.
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
            "label": datasets.Value("float32" if spec.is_regression else "int64"),
        }
    )
    return datasets.Dataset.from_dict(data, features=features)


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


def default_cache_dir() -> Path:
    """Return ``$MONTECLORA_CACHE``, else ``~/.cache/monteclora_pyro``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "monteclora_pyro"


def vader_download_command(dest: str | os.PathLike[str]) -> list[str]:
    """Return the pip command that downloads the VADER source distribution into ``dest``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        VADER_REQUIREMENT,
        "-d",
        str(dest),
    ]


def fetch_vader_archive(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of the VADER source archive, downloading it with pip if absent.

    Parameters
    ----------
    cache_dir : path-like, optional
        Where the archive lives; defaults to :func:`default_cache_dir`.

    Raises
    ------
    RuntimeError
        If the download fails; the message gives the command to run by hand.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    archive = cache / VADER_ARCHIVE
    if archive.is_file():
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s into %s", VADER_REQUIREMENT, cache)
    with tempfile.TemporaryDirectory(dir=cache) as staging:
        command = vader_download_command(staging)
        try:
            subprocess.run(
                command,
                check=True,
                capture_output=True,
                text=True,
                timeout=VADER_DOWNLOAD_TIMEOUT_S,
            )
            os.replace(Path(staging) / VADER_ARCHIVE, archive)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            detail = " ".join(detail.strip().splitlines()[-3:])
            manual = shlex.join(vader_download_command(cache))
            raise RuntimeError(
                f"could not download {VADER_REQUIREMENT} from PyPI ({detail}). "
                f"Run by hand: {manual} (so that {archive} exists), or put {VADER_ARCHIVE} "
                f"in a directory and set {CACHE_ENV} to it (or pass it as --data-dir)."
            ) from exc
    return archive


def read_vader_member(archive: str | os.PathLike[str], file_name: str) -> str:
    """Return the text of ``hutto_ICWSM_2014/<file_name>`` from the VADER source archive.

    The file sits in a tarball nested in the source distribution; both are read in memory.
    """
    source = f"{archive}:{VADER_INNER_ARCHIVE}"
    with tarfile.open(archive, "r:gz") as outer:
        inner_bytes = _read_tar_member(outer, VADER_INNER_ARCHIVE, str(archive))
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        member = f"hutto_ICWSM_2014/{file_name}"
        return _decode(_read_tar_member(inner, member, source), f"{source}:{member}")


def _read_tar_member(tar: tarfile.TarFile, member: str, source: str) -> bytes:
    try:
        handle = tar.extractfile(member)
    except KeyError:
        handle = None
    if handle is None:
        names = ", ".join(tar.getnames()[:20])
        raise DataError(f"{source}: missing file {member}; archive holds: {names}")
    with handle:
        return handle.read()


def load_vader_splits(
    spec: TaskSpec, archive: str | os.PathLike[str]
) -> dict[str, datasets.Dataset]:
    """Load a VADER domain (``spec.hub_id is None``) from the source archive.

    Ratings ``>= 0.5`` are positive, ``<= -0.5`` negative, others dropped. The files are
    grouped by source and sorted within groups, so the rows are put in the order of a
    ``numpy.random.default_rng(0)`` permutation: the first N rows of any split are a random
    subset. With ``spec.layout.resplit`` the permutation is cut into the splits.
    """
    ((split, file_name),) = spec.layout.split_files
    source = f"{archive}:{spec.layout.folder}/{file_name}"
    columns, lines = _parse_tsv(read_vader_member(archive, file_name), source, spec.layout)
    dataset = _build_dataset(spec, source, columns, lines, "line")
    if not spec.layout.resplit:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(dataset))
        return {split: dataset.select(order.tolist())}
    return split_by_fractions(dataset, spec.layout.resplit, seed=SPLIT_SEED)


def split_by_fractions(
    dataset: datasets.Dataset, fractions: Sequence[tuple[str, float]], seed: int
) -> dict[str, datasets.Dataset]:
    """Split ``dataset`` deterministically by a seeded permutation.

    Every split but the first gets ``round(fraction * n)`` rows; the first gets the rest.
    Rows are in permutation order, so the first N rows of a split are a random subset.
    """
    n = len(dataset)
    order = np.random.default_rng(seed).permutation(n)
    sizes = [round(fraction * n) for _, fraction in fractions[1:]]
    sizes.insert(0, n - sum(sizes))
    bounds = np.cumsum([0, *sizes])
    return {
        name: dataset.select(order[start:stop].tolist())
        for (name, _), start, stop in zip(fractions, bounds[:-1], bounds[1:], strict=True)
    }


def tokenize_task(
    task: Task, tokenizer: PreTrainedTokenizerBase, max_length: int = 128
) -> dict[str, datasets.Dataset]:
    """Tokenize every split with truncation to ``max_length`` and no padding.

    Returns
    -------
    dict of str to datasets.Dataset
        Splits with the tokenizer's outputs (``input_ids``, ``attention_mask`` and
        ``token_type_ids`` when produced) and ``labels``. Multiple-choice and next-token tasks
        are tokenized by :func:`monteclora_pyro.causal_data.tokenize_causal_task`.
    """
    if task.spec.kind != "classification":
        from monteclora_pyro.causal_data import tokenize_causal_task

        return tokenize_causal_task(task, tokenizer, max_length)

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        pair = (batch["text_b"],) if "text_b" in batch else ()
        encoded = tokenizer(batch["text_a"], *pair, truncation=True, max_length=max_length)
        return {**encoded, "labels": batch["label"]}

    label_type = "float32" if task.spec.is_regression else "int64"
    return {
        split: dataset.map(
            encode, batched=True, remove_columns=dataset.column_names, desc=f"tokenize {split}"
        ).cast_column("labels", datasets.Value(label_type))
        for split, dataset in task.splits.items()
    }


def make_collator(tokenizer: PreTrainedTokenizerBase, spec: TaskSpec | None = None) -> Collator:
    """Return a collator padding each batch to its longest sequence, as torch tensors.

    With the ``spec`` of a multiple-choice or next-token task, the collator of
    :func:`monteclora_pyro.causal_data.make_causal_collator`.
    """
    if spec is not None and spec.kind != "classification":
        from monteclora_pyro.causal_data import make_causal_collator

        return make_causal_collator(tokenizer, spec)
    return DataCollatorWithPadding(tokenizer, padding="longest", return_tensors="pt")


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
