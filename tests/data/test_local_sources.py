"""Tests for loading tasks from GLUE TSV and SuperGLUE JSONL directories and the hub."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pytest

from monteclora_pyro.data import DATA_ENV, TASKS, DataError, load_task

REAL_GLUE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glue"

# (text_a, text_b) of the three fixture rows; every task's fixture has quote characters.
TEXTS = [
    ('She said "hi" twice.', 'A "quoted" reply.'),
    ("A plain sentence.", "Another plain one."),
    ('"Opening quote without a close', "It's an apostrophe."),
]


@dataclass(frozen=True)
class Fixture:
    """How to write one task's fixture files and what loading them must give."""

    folder: str
    files: tuple[str, str]
    header: list[str] | None
    row: Callable[[int, str, str, Any], Any]
    raw: tuple[Any, Any, Any]
    expected: tuple[Any, Any, Any]
    pair: bool = True
    text_a_prefix: str = ""
    bom: bool = False


GLUE = ("train.tsv", "dev.tsv")
SUPERGLUE = ("train.jsonl", "val.jsonl")
MNLI_HEADER = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "label2",
    "label3",
    "label4",
    "label5",
    "gold_label",
]
STSB_HEADER = "index genre filename year old_index source1 source2 sentence1 sentence2 score"

FIXTURES = {
    "cola": Fixture(
        "CoLA", GLUE, None, lambda i, a, b, y: ["gj04", y, "*" if y == "0" else "", a],
        ("1", "0", "1"), (1, 0, 1), pair=False,
    ),
    "sst2": Fixture(
        "SST-2", GLUE, ["sentence", "label"], lambda i, a, b, y: [a, y],
        ("0", "1", "1"), (0, 1, 1), pair=False,
    ),
    "mrpc": Fixture(
        "MRPC", GLUE, ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        lambda i, a, b, y: [y, str(100 + i), str(200 + i), a, b],
        ("1", "0", "1"), (1, 0, 1), bom=True,
    ),
    "rte": Fixture(
        "RTE", GLUE, ["index", "sentence1", "sentence2", "label"],
        lambda i, a, b, y: [str(i), a, b, y],
        ("not_entailment", "entailment", "not_entailment"), (1, 0, 1),
    ),
    "qnli": Fixture(
        "QNLI", GLUE, ["index", "question", "sentence", "label"],
        lambda i, a, b, y: [str(i), a, b, y],
        ("entailment", "not_entailment", "entailment"), (0, 1, 0),
    ),
    "qqp": Fixture(
        "QQP", GLUE, ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        lambda i, a, b, y: [str(i), str(2 * i), str(2 * i + 1), a, b, y],
        ("0", "1", "0"), (0, 1, 0),
    ),
    "mnli": Fixture(
        "MNLI", ("train.tsv", "dev_matched.tsv"), MNLI_HEADER,
        lambda i, a, b, y: [str(i), "1", "1e", "fiction", "(", "(", "(S", "(S", a, b, y, y, y,
                            y, y, y],
        ("neutral", "contradiction", "entailment"), (1, 2, 0),
    ),
    "stsb": Fixture(
        "STS-B", GLUE, STSB_HEADER.split(),
        lambda i, a, b, y: [str(i), "main-news", "2012", "2012test", "0001", "none", "none",
                            a, b, y],
        ("5.000", "0.250", "3.800"), (5.0, 0.25, 3.8),
    ),
    "wnli": Fixture(
        "WNLI", GLUE, ["index", "sentence1", "sentence2", "label"],
        lambda i, a, b, y: [str(i), a, b, y], ("1", "0", "0"), (1, 0, 0),
    ),
    "boolq": Fixture(
        "BoolQ", SUPERGLUE, None,
        lambda i, a, b, y: {"question": a, "passage": b, "idx": i, "label": y},
        (True, False, True), (1, 0, 1),
    ),
    "wic": Fixture(
        "WiC", SUPERGLUE, None,
        lambda i, a, b, y: {"word": "bank", "sentence1": a, "sentence2": b, "idx": i,
                            "label": y, "pos": "N", "start1": 0, "end1": 3},
        (False, True, True), (0, 1, 1), text_a_prefix="bank: ",
    ),
}  # fmt: skip


def write_fixture(root: Path, task: str) -> Path:
    """Write ``task``'s fixture under ``root`` (train: 3 rows, validation: the first 2)."""
    fx = FIXTURES[task]
    folder = root / fx.folder
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, n_rows in zip(fx.files, (3, 2), strict=True):
        rows = [fx.row(i, *TEXTS[i], fx.raw[i]) for i in range(n_rows)]
        if file_name.endswith(".jsonl"):
            lines = [json.dumps(row) for row in rows]
        else:
            lines = ["\t".join(fields) for fields in rows]
            if fx.header is not None:
                lines.insert(0, "\t".join(fx.header))
        text = "\n".join(lines) + "\n"
        (folder / file_name).write_text(("\ufeff" if fx.bom else "") + text, encoding="utf-8")
    return folder


def write_file(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_fixture_layouts_load_canonically(tmp_path: Path, task: str) -> None:
    fx = FIXTURES[task]
    write_fixture(tmp_path, task)
    loaded = load_task(task, tmp_path)
    assert loaded.spec is TASKS[task]
    assert list(loaded.splits) == ["train", "validation"]
    for split, n_rows in (("train", 3), ("validation", 2)):
        ds = loaded.splits[split]
        expected_columns = ["text_a", "text_b", "label"] if fx.pair else ["text_a", "label"]
        assert ds.column_names == expected_columns
        assert len(ds) == n_rows
        assert ds["text_a"] == [fx.text_a_prefix + a for a, _ in TEXTS[:n_rows]]
        if fx.pair:
            assert ds["text_b"] == [b for _, b in TEXTS[:n_rows]]
        label_type = "float32" if loaded.spec.is_regression else "int64"
        assert ds.features["label"].dtype == label_type
        assert ds["label"] == pytest.approx(list(fx.expected[:n_rows]))


def test_task_folder_env_var_and_max_examples(tmp_path: Path, monkeypatch) -> None:
    folder = write_fixture(tmp_path, "rte")
    direct = load_task("RTE", folder)
    assert direct.splits["train"]["label"] == [1, 0, 1]
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    from_env = load_task("rte", max_examples=1)
    assert {split: len(ds) for split, ds in from_env.splits.items()} == {
        "train": 1,
        "validation": 1,
    }
    assert from_env.splits["train"]["text_a"] == [TEXTS[0][0]]


# --- errors -----------------------------------------------------------------------------------


def rte_lines(label: str = "entailment") -> list[str]:
    header = "index\tsentence1\tsentence2\tlabel"
    return [header, "0\tA.\tB.\tnot_entailment", f"1\tC.\tD.\t{label}"]


def test_bad_label_names_file_line_value_and_label_set(tmp_path: Path) -> None:
    write_file(tmp_path / "RTE" / "train.tsv", rte_lines(label="maybe"))
    write_file(tmp_path / "RTE" / "dev.tsv", rte_lines())
    with pytest.raises(DataError) as info:
        load_task("rte", tmp_path)
    message = str(info.value)
    for part in ("train.tsv", "line 3", "'maybe'", "'entailment'", "'not_entailment'"):
        assert part in message


def test_bad_jsonl_label(tmp_path: Path) -> None:
    good = {"question": "q", "passage": "p", "idx": 0, "label": True}
    write_file(tmp_path / "BoolQ" / "train.jsonl", [json.dumps(good)])
    bad = good | {"label": 2}
    write_file(tmp_path / "BoolQ" / "val.jsonl", [json.dumps(good), json.dumps(bad)])
    with pytest.raises(DataError, match=r"val\.jsonl, line 2: label 2 is not in the label set"):
        load_task("boolq", tmp_path)


def test_regression_score_out_of_range(tmp_path: Path) -> None:
    header = STSB_HEADER.replace(" ", "\t")
    row = "0\tg\tf\ty\t0\ts\ts\tA.\tB.\t"
    write_file(tmp_path / "STS-B" / "train.tsv", [header, row + "7.5"])
    write_file(tmp_path / "STS-B" / "dev.tsv", [header, row + "1.0"])
    with pytest.raises(DataError, match=r"train\.tsv, line 2: score '7.5' outside"):
        load_task("stsb", tmp_path)


@pytest.mark.parametrize("content", [["index\tsentence1\tsentence2\tlabel"], []])
def test_empty_split_names_file(tmp_path: Path, content: list[str]) -> None:
    write_file(tmp_path / "RTE" / "train.tsv", rte_lines())
    (tmp_path / "RTE" / "dev.tsv").write_text("\n".join(content), encoding="utf-8")
    with pytest.raises(DataError, match=r"dev\.tsv.*empty"):
        load_task("rte", tmp_path)


def test_missing_column_names_file_column_and_present_columns(tmp_path: Path) -> None:
    write_file(tmp_path / "RTE" / "train.tsv", rte_lines())
    write_file(tmp_path / "RTE" / "dev.tsv", ["index\tsentence1\thypothesis\tlabel", "0\tA\tB\t1"])
    with pytest.raises(DataError) as info:
        load_task("rte", tmp_path)
    message = str(info.value)
    for part in ("dev.tsv", "missing column", "'sentence2'", "'hypothesis'", "'sentence1'"):
        assert part in message


def test_missing_jsonl_key(tmp_path: Path) -> None:
    write_file(tmp_path / "WiC" / "train.jsonl", [json.dumps({"sentence1": "a", "label": True})])
    with pytest.raises(DataError, match=r"train\.jsonl, line 1: missing column\(s\) 'word'"):
        load_task("wic", tmp_path)


def test_missing_file_names_path_and_directory_content(tmp_path: Path) -> None:
    write_file(tmp_path / "RTE" / "train.tsv", rte_lines())
    write_file(tmp_path / "RTE" / "notes.txt", ["x"])
    with pytest.raises(DataError) as info:
        load_task("rte", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "RTE" / "dev.tsv") in message
    assert "notes.txt" in message and "train.tsv" in message


def test_missing_task_folder(tmp_path: Path) -> None:
    (tmp_path / "SST-2").mkdir()
    with pytest.raises(DataError, match=r"neither a RTE/ folder nor train\.tsv.*SST-2/"):
        load_task("rte", tmp_path)


def test_malformed_lines_are_skipped_with_warning(tmp_path: Path, caplog) -> None:
    lines = rte_lines()
    lines.insert(2, "7\tonly two fields")
    write_file(tmp_path / "RTE" / "train.tsv", lines)
    write_file(tmp_path / "RTE" / "dev.tsv", rte_lines())
    with caplog.at_level(logging.WARNING, logger="monteclora_pyro.data"):
        loaded = load_task("rte", tmp_path)
    assert loaded.splits["train"]["text_a"] == ["A.", "C."]
    assert "skipped 1 line(s)" in caplog.text and "lines 3" in caplog.text


def test_hub_failure_explains_offline_options(monkeypatch) -> None:
    def offline(*args: str) -> None:
        raise ConnectionError(f"no network for {args}")

    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError) as info:
        load_task("rte")
    message = str(info.value)
    for part in ("glue/rte", "no network", "--data-dir", DATA_ENV, "RTE/train.tsv", "RTE/dev.tsv"):
        assert part in message


def test_hub_splits_are_canonicalised(monkeypatch) -> None:
    def split(n: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "premise": [f"p{i}" for i in range(n)],
                "hypothesis": [f"h{i}" for i in range(n)],
                "label": [i % 3 for i in range(n)],
                "idx": list(range(n)),
            }
        )

    hub = datasets.DatasetDict(
        {"train": split(4), "validation_matched": split(2), "validation_mismatched": split(1)}
    )
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: hub)
    loaded = load_task("mnli")
    assert {name: len(ds) for name, ds in loaded.splits.items()} == {"train": 4, "validation": 2}
    assert loaded.splits["train"]["label"] == [0, 1, 2, 0]
    assert loaded.splits["validation"]["text_b"] == ["h0", "h1"]


# --- real GLUE files --------------------------------------------------------------------------

# folder, task, has header, index of the label field, raw label -> id
REAL_FILES = [
    ("CoLA", "cola", False, 1, {"0": 0, "1": 1}),
    ("SST-2", "sst2", True, -1, {"0": 0, "1": 1}),
    ("MRPC", "mrpc", True, 0, {"0": 0, "1": 1}),
    ("RTE", "rte", True, -1, {"entailment": 0, "not_entailment": 1}),
]


@pytest.mark.skipif(not REAL_GLUE.is_dir(), reason="../shared/data/glue not present")
@pytest.mark.parametrize(("folder", "task", "header", "label_index", "label_ids"), REAL_FILES)
def test_real_glue_counts_and_labels(
    folder: str, task: str, header: bool, label_index: int, label_ids: dict[str, int]
) -> None:
    loaded = load_task(task, REAL_GLUE)
    for split, file_name in (("train", "train.tsv"), ("validation", "dev.tsv")):
        raw = (REAL_GLUE / folder / file_name).read_bytes()
        n_lines = raw.count(b"\n") + (not raw.endswith(b"\n"))
        body = raw.decode("utf-8").rstrip("\n").split("\n")[int(header) :]
        expected = Counter(label_ids[line.split("\t")[label_index]] for line in body)
        ds = loaded.splits[split]
        assert len(ds) == n_lines - int(header)
        assert Counter(ds["label"]) == expected
        assert set(ds["label"]) == set(range(TASKS[task].num_labels))
