"""Tasks read from directories written by datasets' save_to_disk."""

from __future__ import annotations

import json

import datasets
import pytest

from monteclora_pyro import MonteCLoRAConfig
from monteclora_pyro.cli import main
from monteclora_pyro.data import DataError, find_saved_dataset, load_task, resolve_task_spec
from monteclora_pyro.training import TrainConfig, Trainer, evaluate_run

SENTENCES = ["good film", "bad film", "great plot", "awful plot", "lovely movie", "boring movie"]


def _rows(n: int = 6, **extra) -> dict:
    return {"text": SENTENCES[:n], "label": [i % 2 for i in range(n)], **extra}


def _save(obj, path):
    obj.save_to_disk(str(path))
    return path


def test_a_dataset_becomes_the_train_split(tmp_path):
    path = _save(datasets.Dataset.from_dict(_rows(idx=list(range(6)))), tmp_path / "reviews")
    files = sorted(p.name for p in path.iterdir())
    task = load_task(str(path))
    assert list(task.splits) == ["train"]
    train = task.splits["train"]
    assert train.column_names == ["text_a", "label"]  # the extra column is left out
    assert train["text_a"] == SENTENCES and train["label"] == [0, 1, 0, 1, 0, 1]
    assert train.features["label"] == datasets.Value("int64")
    spec = task.spec
    assert (spec.name, spec.num_labels, spec.label_names) == ("reviews", 2, ("0", "1"))
    assert resolve_task_spec(path) == spec  # a Path works too
    assert sorted(p.name for p in path.iterdir()) == files  # no cache files written there


def test_a_dataset_dict_keeps_its_splits_pairs_and_class_names(tmp_path):
    features = datasets.Features(
        {
            "text_a": datasets.Value("string"),
            "text_b": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["no", "maybe", "yes"]),
        }
    )
    pairs = {"text_a": ["a", "b"], "text_b": ["c", "d"], "label": [0, 1]}
    dataset_dict = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(pairs, features=features),
        validation=datasets.Dataset.from_dict(pairs, features=features),
        test=datasets.Dataset.from_dict({**pairs, "label": [-1, -1]}, features=features),
    )
    task = load_task(str(_save(dataset_dict, tmp_path / "nli")))
    assert list(task.splits) == ["train", "validation"]  # the unlabelled test split is left out
    assert task.spec.label_names == ("no", "maybe", "yes") and task.spec.num_labels == 3
    assert task.spec.text_fields == ("text_a", "text_b")
    assert task.splits["validation"].column_names == ["text_a", "text_b", "label"]


def test_wrong_columns_and_labels_are_refused_by_name(tmp_path):
    wrong = _save(datasets.Dataset.from_dict({"sentence": ["a"], "y": [1]}), tmp_path / "cols")
    with pytest.raises(DataError) as err:
        load_task(str(wrong))
    assert "['sentence', 'y']" in str(err.value)
    assert "'text' or 'text_a', optionally 'text_b', and 'label'" in str(err.value)
    for n, (label, shown) in enumerate(
        (([0, 0.5], "row 1: label 0.5 "), (["1", "0"], "row 0: label '1' "), ([0, -3], "-3 "))
    ):
        rows = {"text": ["a", "b"], "label": label}
        path = _save(datasets.Dataset.from_dict(rows), tmp_path / f"labels{n}")
        with pytest.raises(DataError, match=shown):
            resolve_task_spec(str(path))
    one_class = _save(datasets.Dataset.from_dict({"text": ["a"], "label": [0]}), tmp_path / "one")
    with pytest.raises(DataError, match="at least two classes"):
        load_task(str(one_class))
    plain = tmp_path / "not-saved"
    plain.mkdir()
    (plain / "train.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"not one written by datasets' save_to_disk.*train\.csv"):
        TrainConfig(task=str(plain))


def test_a_task_name_wins_over_a_directory_of_that_name(tmp_path, monkeypatch):
    _save(datasets.Dataset.from_dict(_rows()), tmp_path / "sst2")
    monkeypatch.chdir(tmp_path)
    assert find_saved_dataset("sst2") is None
    assert find_saved_dataset("./sst2") == tmp_path / "sst2"
    assert TrainConfig(task="./sst2").task == str(tmp_path / "sst2")  # stored absolute


def test_training_a_step_on_a_saved_dataset(toy_assets, tmp_path, capsys):
    model_dir, _ = toy_assets
    words = ["good", "bad", "great", "awful", "lovely", "dreadful", "superb", "sad"]
    rows = {"text": [f"the film was {w}" for w in words], "label": [1, 0] * 4}
    data = _save(
        datasets.DatasetDict(
            train=datasets.Dataset.from_dict(rows),
            validation=datasets.Dataset.from_dict({k: v[:4] for k, v in rows.items()}),
        ),
        tmp_path / "my-reviews",
    )
    out = tmp_path / "run"
    config = TrainConfig(
        model=str(model_dir),
        task=str(data),
        max_steps=1,
        batch_size=8,
        num_samples=2,
        output_dir=str(out),
    )
    metrics = Trainer(config, MonteCLoRAConfig(r=4), progress=False).train()
    assert metrics["task"] == "my-reviews" and metrics["steps"] == 1
    assert metrics["num_train_examples"] == 8 and metrics["num_examples"] == 4
    assert json.loads((out / "config.json").read_text())["train"]["task"] == str(data)
    again = evaluate_run(out, progress=False)  # the run's own task, read again
    assert again["posterior_mean"] == pytest.approx(metrics["posterior_mean"])
    options = ["--model", str(model_dir), "--task", str(data), "--max-steps", "1"]
    options += [
        "--batch-size",
        "8",
        "--num-samples",
        "1",
        "--r",
        "4",
        "--output-dir",
        str(out / "c"),
    ]
    code = main(["--quiet", "train", *options])
    assert code == 0 and "run directory" in capsys.readouterr().out
