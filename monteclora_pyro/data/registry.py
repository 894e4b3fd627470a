"""The task registry: every supported task by name, its aliases and the default task.

GLUE (cola, sst2, mrpc, rte, qnli, qqp, mnli, stsb, wnli), SuperGLUE (boolq, wic), four VADER
sentiment domains (``movie-reviews``, the default task, and the shifted domains
:data:`monteclora_pyro.domains.SHIFT_DOMAINS`) and two packaged prompt-format sets
(``mc-commonsense``, ``tiny-instruct``). :func:`register_task` adds more, e.g. a
multiple-choice set in JSONL.
"""

from __future__ import annotations

from monteclora_pyro.data.formats import data_format
from monteclora_pyro.data.spec import LocalLayout, TaskSpec

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
            likelihood="regression",
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
            likelihood="multiple_choice",
            format="choices",
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
            likelihood="next_token",
            format="instruction",
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


def _alias_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_ALIASES = {_alias_key(name): name for name in TASKS}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS`, e.g. a multiple-choice set converted to JSONL.

    Raises
    ------
    ValueError
        If another task of the same name (or alias) is registered, if ``spec.format`` is
        unknown, or if ``spec`` does not fit its format (e.g. a ``"choices"`` task must name
        one JSONL file and allow at least two choices). ``spec.likelihood`` is checked by the
        model (:func:`monteclora_pyro.models.likelihood.resolve_likelihood`).
    """
    existing = _ALIASES.get(_alias_key(spec.name))
    if existing is not None and TASKS[existing] != spec:
        raise ValueError(f"a different task named {existing!r} is already registered")
    data_format(spec).check_spec(spec)
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
