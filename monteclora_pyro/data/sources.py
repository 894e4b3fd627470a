"""Loading a task by name from a data directory, the package, the VADER archive or the hub,
or from a directory written by ``datasets``' ``save_to_disk``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets

from monteclora_pyro.data.formats import data_format
from monteclora_pyro.data.local import (
    DATA_ENV,
    check_columns,
    expected_layout,
    load_from_directory,
    load_prompt_splits,
)
from monteclora_pyro.data.prompts import PromptFormat
from monteclora_pyro.data.registry import get_task_spec
from monteclora_pyro.data.saved import load_saved_task, saved_dataset_path
from monteclora_pyro.data.spec import Task, TaskSpec
from monteclora_pyro.data.text import TEXT
from monteclora_pyro.data.vader import VADER_ARCHIVE, fetch_vader_archive, load_vader_splits

logger = logging.getLogger(__name__)


def load_task(
    name: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    max_examples: int | None = None,
) -> Task:
    """Load a task's labelled splits in canonical form.

    GLUE/SuperGLUE data are read from ``data_dir``, else from ``$MONTECLORA_DATA``, else from
    the Hugging Face hub. The directory may be the data root (holding e.g. ``RTE/``) or the task
    folder itself. VADER domains are read from ``vaderSentiment-3.2.1.tar.gz`` in that
    directory if it is there, else from the cache (downloaded on first use, see
    :func:`~monteclora_pyro.data.fetch_vader_archive`). Prompt-format tasks are read from the
    package or from JSONL in that directory (:func:`load_prompt_splits`).

    ``name`` may also be a directory written by ``datasets``' ``save_to_disk``
    (:mod:`~monteclora_pyro.data.saved`); ``data_dir`` is then not consulted.

    Parameters
    ----------
    name : str or path-like
        Task name or alias (see :data:`~monteclora_pyro.data.TASKS`), or a ``save_to_disk``
        directory.
    data_dir : path-like, optional
        Local data directory.
    max_examples : int, optional
        Keep only the first ``max_examples`` rows of each split.

    Returns
    -------
    Task
        The spec and the splits (``train``/``validation``/``test`` when present).
    """
    saved = find_saved_dataset(name)
    if saved is not None:
        task = load_saved_task(saved)
        spec, splits = task.spec, task.splits
    else:
        spec = resolve_task_spec(name)
        splits = _load_registered(spec, data_dir)
    if max_examples is not None:
        splits = {split: take_first(ds, max_examples) for split, ds in splits.items()}
    logger.info(
        "loaded task %s: %s",
        spec.name,
        ", ".join(f"{split}={len(ds)}" for split, ds in splits.items()),
    )
    return Task(spec=spec, splits=splits)


def _load_registered(
    spec: TaskSpec, data_dir: str | os.PathLike[str] | None
) -> dict[str, datasets.Dataset]:
    """The splits of a registered task, from wherever its data live."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or None
    if isinstance(data_format(spec), PromptFormat):
        return load_prompt_splits(spec, root)
    if spec.hub_id is None:
        archive = Path(root) / VADER_ARCHIVE if root is not None else None
        if archive is None or not archive.is_file():
            archive = fetch_vader_archive()
        return load_vader_splits(spec, archive)
    if root is None:
        return _load_from_hub(spec, spec.hub_id)
    return load_from_directory(spec, Path(root))


def resolve_task_spec(name: str | os.PathLike[str]) -> TaskSpec:
    """The spec of a registered task or of a ``save_to_disk`` directory (see :func:`load_task`).

    Raises
    ------
    ValueError
        If ``name`` is neither; a :class:`DataError` if it is a directory that cannot be read
        as a task.
    """
    saved = find_saved_dataset(name)
    if saved is not None:
        return load_saved_task(saved).spec
    try:
        return get_task_spec(os.fspath(name))
    except ValueError as err:
        raise ValueError(f"{err}; or a directory written by datasets' save_to_disk") from err


def find_saved_dataset(name: str | os.PathLike[str]) -> Path | None:
    """The absolute ``save_to_disk`` directory that ``name`` stands for, or None.

    None when ``name`` is a registered task (a task name wins over a directory of that name
    unless written as a path, e.g. ``./sst2``) or not a directory.

    Raises
    ------
    DataError
        If ``name`` is a directory that ``save_to_disk`` did not write.
    """
    return saved_dataset_path(name, _is_registered(name))


def _is_registered(name: str | os.PathLike[str]) -> bool:
    if isinstance(name, os.PathLike):
        return False
    try:
        get_task_spec(name)
    except ValueError:
        return False
    return True


def take_first(dataset: datasets.Dataset, n: int) -> datasets.Dataset:
    """Return the first ``n`` rows of ``dataset`` (all of it if shorter)."""
    if n < 0:
        raise ValueError(f"max_examples must be non-negative, got {n}")
    return dataset.select(range(min(n, len(dataset))))


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
        check_columns(source, needed, table.column_names)
        columns = {col: list(table[col]) for col in needed}
        splits[split] = TEXT.build(spec, source, columns, list(range(len(table))), "row")
    return splits
