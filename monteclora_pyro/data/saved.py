"""Tasks read from a directory written by ``datasets.Dataset.save_to_disk``.

A user's own classification data, saved with :meth:`datasets.Dataset.save_to_disk` or
:meth:`datasets.DatasetDict.save_to_disk`, is a task: pass its directory wherever a task name
goes (``--task``, :func:`~monteclora_pyro.data.load_task`, ``TrainConfig.task``).

- Columns: ``text`` or ``text_a``, optionally ``text_b`` (a text pair), and ``label``; other
  columns are ignored.
- Splits: a single ``Dataset`` becomes the ``train`` split; a ``DatasetDict`` keeps its split
  names (``train``, ``validation``, ``test``, ...). A split whose labels are all -1 (the hub's
  unlabelled test splits) is left out with a warning.
- Labels: integer class ids 0..C-1 (integral floats such as ``1.0`` are accepted). C is the
  number of names of a ``ClassLabel`` feature, else the largest id plus one; it must be at
  least 2. Anything else (a string, a fraction, a negative id) is refused, naming the value.

A registered task name wins over a directory of the same name in the working directory;
write ``./name`` for the directory.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import datasets
from datasets.table import InMemoryTable

from monteclora_pyro.data.spec import DataError, LocalLayout, Task, TaskSpec

logger = logging.getLogger(__name__)

#: Files that mark a ``DatasetDict`` or a ``Dataset`` written by ``save_to_disk``.
MARKERS = ("dataset_dict.json", "state.json")
TEXT_COLUMNS = ("text", "text_a")
EXPECTED = "'text' or 'text_a', optionally 'text_b', and 'label'"
UNLABELLED = -1


def is_saved_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory written by ``Dataset``/``DatasetDict.save_to_disk``."""
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in MARKERS)


def saved_dataset_path(name: str | os.PathLike[str], registered: bool) -> Path | None:
    """The directory ``name`` refers to, or None when it names a task of the registry.

    Parameters
    ----------
    name : str or path-like
        A task name or a directory.
    registered : bool
        Whether ``name`` is the name (or alias) of a registered task; a registered name wins
        unless ``name`` is written as a path (it holds a separator or is path-like).

    Raises
    ------
    DataError
        If ``name`` is an unregistered directory that ``save_to_disk`` did not write.
    """
    written_as_path = isinstance(name, os.PathLike) or any(
        sep and sep in name for sep in (os.sep, os.altsep)
    )
    path = Path(name).expanduser()
    if (registered and not written_as_path) or not path.is_dir():
        return None
    if not is_saved_dataset(path):
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        raise DataError(
            f"{path} is a directory but not one written by datasets' save_to_disk (it has no "
            f"{' or '.join(MARKERS)}); it contains: {', '.join(entries) or '(nothing)'}"
        )
    return path.resolve()


def load_saved_task(path: str | os.PathLike[str]) -> Task:
    """Read a ``save_to_disk`` directory as a classification task in canonical form.

    Returns
    -------
    Task
        Splits with columns ``text_a`` (``text`` renamed), optionally ``text_b``, and
        ``label`` (``int64``); the spec is named after the directory.

    Raises
    ------
    DataError
        If the directory cannot be read, a split lacks the expected columns (the message lists
        the columns found and those expected), or a label is not a class id.
    """
    path = Path(path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"{path}: datasets.load_from_disk cannot read it: {err}") from err
    raw = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    text_fields = _text_fields(path, raw)
    ids, names = {}, None
    for split, table in raw.items():
        feature = table.features["label"]
        if isinstance(feature, datasets.ClassLabel) and names is None:
            names = tuple(feature.names)
        ids[split] = _label_ids(f"{path} [{split}]", table["label"])
    for split in [s for s, values in ids.items() if values and set(values) == {UNLABELLED}]:
        logger.warning("%s: split %r has no labels (all %d); left out", path, split, UNLABELLED)
        del raw[split], ids[split]
    for split, values in ids.items():
        if UNLABELLED in values:
            row = values.index(UNLABELLED)
            raise DataError(f"{path} [{split}], row {row}: label -1 (unlabelled) among labels")
    if not raw:
        raise DataError(f"{path}: no labelled split")
    largest = max((max(values) for values in ids.values() if values), default=-1)
    if names is None:
        names = tuple(str(i) for i in range(largest + 1))
    elif largest >= len(names):
        raise DataError(
            f"{path}: label {largest} is not a class of the ClassLabel names {list(names)}"
        )
    if len(names) < 2:
        raise DataError(f"{path}: a classification task needs at least two classes, found {names}")
    spec = TaskSpec(
        name=path.resolve().name,
        text_fields=text_fields,
        num_labels=len(names),
        label_names=names,
        metrics=(),
        is_regression=False,
        layout=LocalLayout(
            folder=str(path),
            file_format="arrow",
            split_files=tuple((split, split) for split in raw),
            columns=tuple((col, col) for col in (*text_fields, "label")),
        ),
        hub_splits=(),
    )
    splits = {split: _canonical(table, text_fields) for split, table in raw.items()}
    return Task(spec=spec, splits=splits)


def _text_fields(path: Path, raw: dict[str, datasets.Dataset]) -> tuple[str, ...]:
    """The canonical text fields of every split, which must agree."""
    found = None
    for split, table in raw.items():
        columns = table.column_names
        texts = [c for c in TEXT_COLUMNS if c in columns]
        if len(texts) != 1 or "label" not in columns:
            raise DataError(
                f"{path} [{split}]: columns {columns} do not fit: expected {EXPECTED}"
                + (" (not both 'text' and 'text_a')" if len(texts) == 2 else "")
            )
        for column in [texts[0], *(["text_b"] if "text_b" in columns else [])]:
            feature = table.features[column]
            if getattr(feature, "dtype", None) not in ("string", "large_string"):
                raise DataError(f"{path} [{split}]: column {column!r} holds {feature}, not text")
        fields = ("text_a", "text_b") if "text_b" in columns else ("text_a",)
        if found is not None and fields != found:
            raise DataError(f"{path} [{split}]: 'text_b' is in some splits and not in others")
        found = fields
    return found


def _label_ids(source: str, values: list[Any]) -> list[int]:
    """Integer class ids (-1 kept: unlabelled), refusing anything else by value and row."""
    ids = []
    for row, value in enumerate(values):
        integral = isinstance(value, float) and math.isfinite(value) and value.is_integer()
        if not (isinstance(value, int) and not isinstance(value, bool)) and not integral:
            raise DataError(
                f"{source}, row {row}: label {value!r} is not an integer class id "
                "(classification needs labels 0, 1, ..., C-1)"
            )
        if value < UNLABELLED:
            raise DataError(f"{source}, row {row}: label {value!r} is negative")
        ids.append(int(value))
    return ids


def _canonical(table: datasets.Dataset, text_fields: tuple[str, ...]) -> datasets.Dataset:
    """Keep the text and label columns, ``text`` renamed ``text_a``, labels as int64.

    The result is an in-memory table (its buffers still map the files), so that casting and
    tokenising write no cache files into the user's directory.
    """
    keep = [c for c in (*TEXT_COLUMNS, "text_b", "label") if c in table.column_names]
    arrow = table.select_columns(keep).with_format("arrow")[:]
    table = datasets.Dataset(InMemoryTable(arrow))
    if "text" in keep:
        table = table.rename_column("text", "text_a")
    features = datasets.Features(
        {**{f: datasets.Value("string") for f in text_fields}, "label": datasets.Value("int64")}
    )
    return table.cast(features)
