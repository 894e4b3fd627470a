"""Tests for the task registry: names, aliases, metadata and registering a task."""

from __future__ import annotations

import dataclasses

import pytest

from monteclora_pyro.data import (
    DEFAULT_TASK,
    FORMATS,
    SHIFT_DOMAINS,
    TASKS,
    LocalLayout,
    TaskSpec,
    get_task_spec,
    register_task,
    registry,
)


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("SST-2", "sst2"),
        ("sst-2", "sst2"),
        ("STS-B", "stsb"),
        ("stsb", "stsb"),
        ("CoLA", "cola"),
        ("Movie_Reviews", "movie-reviews"),
    ],
)
def test_aliases(alias: str, name: str) -> None:
    assert get_task_spec(alias).name == name


def test_unknown_task_lists_known_tasks() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'squad'.*rte.*movie-reviews"):
        get_task_spec("squad")


def test_registry_metadata() -> None:
    assert TASKS["cola"].metrics == ("mcc",)
    assert TASKS["mrpc"].metrics == TASKS["qqp"].metrics == ("f1",)
    assert TASKS["stsb"].metrics == ("pearson", "spearman")
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert TASKS["rte"].hub_id == ("glue", "rte")
    assert TASKS["boolq"].hub_id == ("super_glue", "boolq")
    for spec in TASKS.values():
        assert 1 <= len(spec.text_fields) <= 2
        assert spec.is_regression or len(spec.label_names) == spec.num_labels


# --- registering a task -----------------------------------------------------------------------

TOY = TaskSpec(
    name="toy-mc",
    text_fields=("question",),
    num_labels=2,
    label_names=("A", "B"),
    metrics=(),
    is_regression=False,
    likelihood="multiple_choice",
    format="choices",
    layout=LocalLayout(
        folder="TOY",
        file_format="jsonl",
        split_files=(("all", "toy.jsonl"),),
        columns=(("question", "question"), ("choices", "choices"), ("label", "label")),
    ),
)


@pytest.fixture
def fresh_registry(monkeypatch) -> None:
    """Undo the registrations a test makes."""
    monkeypatch.setattr(registry, "TASKS", dict(registry.TASKS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


def test_builtin_tasks_have_known_formats_and_fit_them(fresh_registry) -> None:
    assert DEFAULT_TASK in TASKS and set(SHIFT_DOMAINS) <= set(TASKS)
    for spec in TASKS.values():
        assert spec.format in FORMATS
        assert register_task(spec) is spec
    assert register_task(TOY) is TOY and get_task_spec("TOY_MC") is TOY


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"format": "table"},
            r"toy-mc: format='table' is invalid: allowed values are 'text', 'choices', 'instr",
        ),
        ({"num_labels": 1}, r"num_labels=1 must be the largest number of choices"),
        (
            {"layout": dataclasses.replace(TOY.layout, split_files=(("a", "a"), ("b", "b")))},
            r"the choices format reads one JSONL file whose rows name their split",
        ),
        ({"format": "text", "packaged": True}, r"packaged files are read in prompt formats only"),
        ({"format": "text", "text_fields": ("q", "c", "l")}, r"one or two text fields"),
        (
            {"format": "text", "text_fields": ("sentence",)},
            r"layout.columns does not map 'sentence'$",
        ),
    ],
)
def test_register_task_rejects_a_spec_that_does_not_fit(
    fresh_registry, changes: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        register_task(dataclasses.replace(TOY, **changes))
    assert "toy-mc" not in registry.TASKS
