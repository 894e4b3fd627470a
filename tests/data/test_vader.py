"""Tests for the VADER sentiment domains: the archive, thresholds, splits and the cache."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest

from monteclora_pyro.data import (
    CACHE_ENV,
    DATA_ENV,
    TASKS,
    VADER_ARCHIVE,
    VADER_INNER_ARCHIVE,
    fetch_vader_archive,
    load_task,
    load_vader_splits,
    split_by_fractions,
)

MOVIE_ROWS = [(f"m{i}", 1.5 if i % 2 else -2.0, f"movie snippet {i} café") for i in range(50)]
THRESHOLD_ROWS = [
    ("t1", 0.5, 'exactly positive "quoted"'),
    ("t2", -0.5, "exactly negative"),
    ("t3", 0.49, "neutral, dropped"),
    ("t4", -0.49, "neutral too, dropped"),
    ("t5", 3.2, "clearly positive"),
]


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def ground_truth(rows: list[tuple[str, float, str]]) -> bytes:
    return "\r\n".join(f"{i}\t{score}\t{text}" for i, score, text in rows).encode("utf-8")


def write_vader_archive(directory: Path) -> Path:
    """Write a fake ``vaderSentiment-3.2.1.tar.gz`` with the real nested layout."""
    inner = tar_bytes(
        {
            "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": ground_truth(
                [*MOVIE_ROWS, *THRESHOLD_ROWS[2:4]]
            ),
            "hutto_ICWSM_2014/tweets_GroundTruth.txt": ground_truth(THRESHOLD_ROWS),
            "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt": ground_truth(MOVIE_ROWS[:3]),
            "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt": ground_truth(MOVIE_ROWS[:4]),
        }
    )
    archive = directory / VADER_ARCHIVE
    archive.write_bytes(tar_bytes({VADER_INNER_ARCHIVE: inner, "vaderSentiment-3.2.1/x": b""}))
    return archive


def test_vader_thresholding(tmp_path: Path) -> None:
    write_vader_archive(tmp_path)
    tweets = load_task("tweets", tmp_path)
    assert list(tweets.splits) == ["test"]
    kept = ['exactly positive "quoted"', "exactly negative", "clearly positive"]
    order = np.random.default_rng(0).permutation(3)
    assert tweets.splits["test"]["text_a"] == [kept[i] for i in order]
    assert tweets.splits["test"]["label"] == [[1, 0, 1][i] for i in order]
    assert tweets.spec.label_names == ("negative", "positive")
    assert len(load_task("amazon", tmp_path).splits["test"]) == 3
    assert len(load_task("nyt", tmp_path).splits["test"]) == 4


def test_movie_reviews_split_sizes_determinism_disjointness(tmp_path: Path) -> None:
    write_vader_archive(tmp_path)
    first = load_task("movie-reviews", tmp_path)
    second = load_task("movie-reviews", tmp_path)
    sizes = {name: len(ds) for name, ds in first.splits.items()}
    assert sizes == {"train": 40, "validation": 5, "test": 5}
    texts = {name: ds["text_a"] for name, ds in first.splits.items()}
    assert texts == {name: ds["text_a"] for name, ds in second.splits.items()}
    all_texts = [text for _, _, text in MOVIE_ROWS]
    assert sorted(text for split in texts.values() for text in split) == sorted(all_texts)
    assert texts["train"] != all_texts[:40]
    perm = np.random.default_rng(0).permutation(50)
    assert texts["test"] == [all_texts[i] for i in perm[45:]]
    labels = dict(zip(all_texts, [int(score > 0) for _, score, _ in MOVIE_ROWS], strict=True))
    assert first.splits["train"]["label"] == [labels[t] for t in texts["train"]]


def test_split_by_fractions_keeps_every_row_once() -> None:
    ds = datasets.Dataset.from_dict({"i": list(range(11))})
    parts = split_by_fractions(ds, [("a", 0.5), ("b", 0.3), ("c", 0.2)], seed=3)
    assert [len(p) for p in parts.values()] == [6, 3, 2]
    assert sorted(i for part in parts.values() for i in part["i"]) == list(range(11))


def test_vader_cache_env_is_used_without_download(tmp_path: Path, monkeypatch) -> None:
    write_vader_archive(tmp_path)
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    assert len(load_task("tweets").splits["test"]) == 3


def test_vader_download_failure_says_what_to_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(RuntimeError) as info:
        fetch_vader_archive(tmp_path / "cache")
    message = str(info.value)
    for part in ("pip download", "--no-binary :all:", "vaderSentiment==3.2.1", CACHE_ENV):
        assert part in message
    assert str(tmp_path / "cache" / VADER_ARCHIVE) in message


def test_real_vader_download() -> None:
    try:
        archive = fetch_vader_archive()
    except RuntimeError as exc:
        pytest.skip(f"vaderSentiment==3.2.1 could not be downloaded from PyPI: {exc}")
    sizes = {
        name: {split: len(ds) for split, ds in load_vader_splits(TASKS[name], archive).items()}
        for name in ("movie-reviews", "tweets", "amazon", "nyt")
    }
    assert sizes == {
        "movie-reviews": {"train": 8058, "validation": 1007, "test": 1007},
        "tweets": {"test": 3432},
        "amazon": {"test": 2985},
        "nyt": {"test": 2970},
    }
