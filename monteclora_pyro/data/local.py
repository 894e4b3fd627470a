"""Local task files: GLUE TSV and SuperGLUE JSONL directories, and prompt-format JSONL files."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import datasets

from monteclora_pyro.data.formats import prompt_format
from monteclora_pyro.data.spec import DataError, LocalLayout, TaskSpec
from monteclora_pyro.data.text import TEXT

logger = logging.getLogger(__name__)

DATA_ENV = "MONTECLORA_DATA"
RESOURCES = "resources"


def packaged_path(file_name: str) -> Traversable:
    """A file of ``monteclora_pyro/resources/`` (an importlib.resources traversable)."""
    return resources.files("monteclora_pyro").joinpath(RESOURCES, file_name)


def load_prompt_splits(
    spec: TaskSpec, data_dir: str | os.PathLike[str] | None = None
) -> dict[str, datasets.Dataset]:
    """Read a prompt-format task from JSONL; every row names its ``split``.

    Multiple-choice rows need ``question``, ``choices`` (2..``spec.num_labels`` distinct
    non-empty strings) and ``label``; instruction rows need ``prompt`` and ``response``.
    A packaged task is read from the package, any other from
    ``data_dir/{layout.folder}/{file}`` (or ``data_dir/{file}``).
    """
    fmt = prompt_format(spec.format, spec.name)
    ((_, file_name),) = spec.layout.split_files
    if spec.packaged:
        path = packaged_path(file_name)
        if not path.is_file():
            raise DataError(f"packaged file {path} is missing: reinstall monteclora-pyro")
    else:
        if data_dir is None:
            raise DataError(
                f"task {spec.name} reads {spec.layout.folder}/{file_name} from a data directory: "
                f"pass data_dir (--data-dir) or set {DATA_ENV}"
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
        row = fmt.check_row(spec, record, where)
        columns = rows.setdefault(split, {key: [] for key in row})
        for key, value in row.items():
            columns[key].append(value)
    if not rows:
        raise DataError(f"{path}: no rows")
    features = fmt.features(spec)
    return {split: datasets.Dataset.from_dict(c, features=features) for split, c in rows.items()}


def expected_layout(spec: TaskSpec) -> str:
    """Describe the files a local data directory must hold for ``spec``."""
    files = " and ".join(f"{spec.layout.folder}/{file}" for _, file in spec.layout.split_files)
    kind = "GLUE TSV" if spec.layout.file_format == "tsv" else "SuperGLUE JSONL"
    return f"{files} (standard {kind} layout)"


def load_from_directory(spec: TaskSpec, root: Path) -> dict[str, datasets.Dataset]:
    """Read a text-format task from ``root``, the data root or the task folder itself."""
    task_dir = _resolve_task_dir(spec, root)
    splits = {}
    for split, file_name in spec.layout.split_files:
        path = task_dir / file_name
        if not path.is_file():
            raise DataError(f"missing file {path}; {_describe_dir(task_dir)}")
        text = decode(path.read_bytes(), str(path))
        if not text.strip():
            raise DataError(f"{path}: empty file (empty split {split!r})")
        if spec.layout.file_format == "jsonl":
            columns, lines = parse_jsonl(text, str(path), spec.layout)
        else:
            columns, lines = parse_tsv(text, str(path), spec.layout)
        splits[split] = TEXT.build(spec, str(path), columns, lines, "line")
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


def decode(data: bytes, source: str) -> str:
    """Decode UTF-8 (with or without a byte-order mark), naming ``source`` on failure."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not valid UTF-8 at byte {exc.start}") from exc


def check_columns(source: str, needed: Sequence[str], present: Collection[str]) -> None:
    """Raise :class:`DataError` naming the ``needed`` columns missing from ``present``."""
    missing = [col for col in needed if col not in present]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; "
            f"columns present: {', '.join(map(repr, present))}"
        )


def parse_tsv(
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
        check_columns(source, [str(ref) for _, ref in layout.columns], header)
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


def parse_jsonl(
    text: str, source: str, layout: LocalLayout
) -> tuple[dict[str, list[Any]], list[int]]:
    """Read the ``layout.columns`` of each JSON object; returns columns and line numbers."""
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
        check_columns(f"{source}, line {number}", [str(r) for _, r in layout.columns], record)
        for col, ref in layout.columns:
            columns[col].append(record[str(ref)])
        kept.append(number)
    return columns, kept
