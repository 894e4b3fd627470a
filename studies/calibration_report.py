"""docs/calibration.md from the run directories of ``studies/calibration.py``.

Every number is recomputed from the saved predictions; settings are selected on the carved
validation splits (``evaluations/{task}-train-validation/``), never on the reported GLUE dev
split. A hand-written reading between the ``READING`` markers of an existing document is kept.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from calibration import (
    CHECKPOINT_MEMBERS,
    ENSEMBLE_SEEDS,
    MONTECLORA,
    SEEDS,
    TASKS,
    TRAINED,
    run_dir,
)
from calibration_scores import cell, normalised, relative_width, scores, train_nll
from calibration_shifted import shifted_section
from matplotlib.figure import Figure

from monteclora_pyro import runs
from monteclora_pyro.analysis.plots import plot_reliability
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.data import get_task_spec

READING = ("<!-- READING -->", "<!-- /READING -->")
ACCURACY_SLACK = 0.005  # "accuracy within 0.5 points of LoRA's"
BASELINES = ("mc-dropout", "temperature", "laplace", "checkpoint-ensemble", "deep-ensemble-m3")
COLUMNS = (
    "method", "score", "accuracy", "ece15", "ece10", "nll", "brier", "sel_auc",
    "mutual_information", "train_nll", "train_time", "eval_time", "seeds",
)  # fmt: skip


def command_seconds(root: Path) -> dict[str, float]:
    """Wall seconds of each logged command, by its output directory."""
    log = root / "commands.log"
    seconds = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        found = re.search(r"--output-dir (\S+).*# rc=0 (\d+)s$", line)
        if found:
            seconds[found.group(1)] = float(found.group(2))
    return seconds


class TaskResults:
    """Every finished run of one task, read back."""

    def __init__(self, root: Path, task: str):
        self.root, self.task = root, task
        self.seconds = command_seconds(root)
        self._validation: dict[Path, runs.Predictions | None] = {}

    def runs_of(self, name: str, seeds=SEEDS) -> list[Path]:
        found = [run_dir(self.root, self.task, name, s) for s in seeds]
        return [d for d in found if (d / runs.METRICS_FILE).is_file()]

    def validation_predictions(self, run: Path) -> runs.Predictions | None:
        """The predictions of ``run`` on its carved validation split, read once."""
        if run not in self._validation:
            directory = runs.evaluation_dir(run, self.task, runs.VALIDATION_SPLIT)
            found = runs.read_predictions(directory) if runs.has_predictions(directory) else None
            self._validation[run] = found
        return self._validation[run]

    def validation(self, run: Path) -> dict | None:
        predictions = self.validation_predictions(run)
        return None if predictions is None else scores(predictions, self.task)

    def mean_validation(self, name: str, key: str) -> float:
        values = [v[key] for d in self.runs_of(name) if (v := self.validation(d)) is not None]
        return float(np.mean(values)) if values else math.nan

    def timing(self, name: str) -> tuple[float, float]:
        """Mean training and evaluation seconds of a trained method."""
        found = [runs.read_timing(d) for d in self.runs_of(name, ENSEMBLE_SEEDS)]
        found = [t for t in found if t is not None]
        if not found:
            return math.nan, math.nan
        return tuple(
            float(np.mean([t[k] for t in found])) for k in ("train_seconds", "eval_seconds")
        )

    def cost(self, name: str) -> tuple[float, float]:
        """Training and evaluation time as multiples of LoRA's."""
        lora_train, lora_eval = self.timing("lora")
        if name in TRAINED:
            train, evaluation = self.timing(name)
            return train / lora_train, evaluation / lora_eval
        members = re.search(r"-m(\d)$", name)
        if members:
            m = int(members.group(1))
            deep = name.startswith("deep")
            return (float(m) if deep else 1.0), float(m)
        fits = [self.seconds.get(str(d), math.nan) for d in self.runs_of(name)]
        return 1.0 + float(np.mean(fits)) / lora_train, math.nan

    def row(self, name: str, label: str | None = None) -> dict | None:
        seeds = tuple(range(len(ENSEMBLE_SEEDS))) if name == "deep-ensemble-m3" else SEEDS
        if name == "deep-ensemble-m4":
            seeds = (0,)
        found = self.runs_of(name, seeds)
        if not found:
            return None
        per_seed = [scores(runs.read_predictions(d), self.task) for d in found]
        sources = [d if name in TRAINED else self.source(d) for d in found]
        per_seed = [
            s | {"train_nll": train_nll(src) if src else math.nan}
            for s, src in zip(per_seed, sources, strict=True)
        ]
        train_time, eval_time = self.cost(name)
        row = {"method": label or name, "seeds": len(found), "_name": name}
        for key in per_seed[0]:
            values = np.array([s[key] for s in per_seed])
            row[key] = (
                float(values.mean()),
                float(values.std(ddof=1)) if len(values) > 1 else None,
            )
        row["train_time"], row["eval_time"] = train_time, eval_time
        row["_per_seed"] = per_seed
        return row

    def source(self, run: Path) -> Path | None:
        source = runs.read_metrics(run).get("source")
        return Path(source) if source else None

    def select_checkpoint_members(self) -> str | None:
        """The checkpoint ensemble's M with the lowest mean validation NLL."""
        names = [f"checkpoint-ensemble-m{m}" for m in CHECKPOINT_MEMBERS]
        nlls = {n: self.mean_validation(n, "nll") for n in names}
        nlls = {n: v for n, v in nlls.items() if not math.isnan(v)}
        return min(nlls, key=nlls.get) if nlls else None

    def majority_rate(self) -> float:
        """Mean share of the most frequent class in the validation splits of LoRA's runs."""
        shares = []
        for run in self.runs_of("lora"):
            if (predictions := self.validation_predictions(run)) is not None:
                shares.append(np.bincount(predictions.labels).max() / len(predictions.labels))
        return float(np.mean(shares)) if shares else math.nan

    def learned(self) -> bool:
        """Whether LoRA beats the majority class on validation by more than 0.5 points; where
        it does not, every constant predictor is "within 0.5 points" of it."""
        return self.mean_validation("lora", "accuracy") - self.majority_rate() > ACCURACY_SLACK

    def select_monteclora(self) -> tuple[str | None, list[dict]]:
        """The MonteCLoRA setting with the lowest validation NLL at accuracy within 0.5 points
        of LoRA's; none on a task LoRA has not learned (:meth:`learned`)."""
        floor = self.mean_validation("lora", "accuracy") - ACCURACY_SLACK
        if not self.learned():
            floor = math.inf
        table = []
        for name in MONTECLORA:
            accuracy, nll = (self.mean_validation(name, k) for k in ("accuracy", "nll"))
            if not math.isnan(nll):
                width = [relative_width(d) for d in self.runs_of(name)]
                table.append(
                    {"setting": name, "val_accuracy": accuracy, "val_nll": nll}
                    | {"q(A) sd ÷ rms μ_A": float(np.mean(width))}
                )
        eligible = [r for r in table if r["val_accuracy"] >= floor]
        chosen = min(eligible, key=lambda r: r["val_nll"]) if eligible else None
        for r in table:
            r["eligible"] = r in eligible
            r["chosen"] = r is chosen
        return (chosen["setting"] if chosen else None), table


def task_section(
    results: TaskResults,
    figures: Path,
    doc_dir: Path,
    selected: tuple[str | None, list[dict]],
    default: str | None,
) -> tuple[str, dict]:
    """The table, selection and reliability figure of one task; ``selected`` is its
    :meth:`TaskResults.select_monteclora`, ``default`` the setting the study selected overall,
    shown in the figure where the task selected none itself."""
    task = results.task
    chosen_m = results.select_checkpoint_members()
    chosen, selection = selected
    names = [
        ("lora", None), ("mc-dropout", None), ("temperature", None), ("laplace", None),
        (chosen_m, f"checkpoint-ensemble ({chosen_m[-2:] if chosen_m else ''})"),
        ("deep-ensemble-m3", "deep-ensemble (M=3)"), ("deep-ensemble-m4", "deep-ensemble (M=4)"),
        ("peft-monteclora", None), *[(n, f"monteclora {n}") for n in MONTECLORA],
    ]  # fmt: skip
    rows = [r for name, label in names if name and (r := results.row(name, label))]
    if not rows:
        return f"## {task}\n\nNo finished runs yet.\n", {}
    extra = get_task_spec(task).metrics
    score_name = extra[0].upper() if extra else "accuracy"
    headers = {"score": score_name, "sel_auc": "sel. AUC", "mutual_information": "MI"}
    headers |= {"train_nll": "train NLL", "train_time": "train time", "eval_time": "eval time"}
    columns = [c for c in COLUMNS if c != "score" or extra]
    shown = [
        {k: cell(r[k]) if k not in ("method", "seeds") else r[k] for k in COLUMNS} for r in rows
    ]
    table = format_table(shown, columns, headers=headers, markdown=True)
    setting = TASKS[task]
    text = [f"## {task}\n"]
    size = setting.max_train_examples
    text.append(
        f"Training: {f'the first {size}' if size else 'all'} "
        f"training examples less the carved 10 % validation split, {setting.epochs} epochs, "
        f"max_length {setting.max_length}. Reported: GLUE dev.\n"
    )
    text.append(table + "\n")
    if selection:
        rows_sel = [
            {
                k: (("—" if math.isnan(v) else f"{v:.4f}") if isinstance(v, float) else v)
                for k, v in r.items()
            }
            for r in selection
        ]
        text.append(
            "MonteCLoRA settings on the validation split (lowest NLL among those whose accuracy "
            f"is within 0.5 points of LoRA's {results.mean_validation('lora', 'accuracy'):.4f}; "
            "the last column, the Bayesian objective's q(A) sd over the root mean square of its "
            "mean μ_A, averaged over layers and seeds, says how much of A is noise):\n"
        )
        if not results.learned():
            text.append(
                f"LoRA's validation accuracy is within 0.5 points of the majority class's share "
                f"({results.majority_rate():.4f}): LoRA has not learned the task, so it selects "
                "no setting.\n"
            )
        text.append(
            format_table(
                rows_sel,
                ["setting", "val_accuracy", "val_nll", "eligible", "chosen", "q(A) sd ÷ rms μ_A"],
                markdown=True,
            )
            + "\n"
        )
    figure = reliability_figure(results, chosen, default, rows)
    if figure is not None:
        path = figures / f"reliability-{task}.png"
        figure.savefig(path, dpi=110)
        text.append(f"![reliability, {task}]({path.relative_to(doc_dir)})\n")
    return "\n".join(text), {"rows": rows, "chosen": chosen, "selection": selection}


def reliability_figure(
    results: TaskResults, chosen: str | None, default: str | None, rows: list[dict]
) -> Figure | None:
    """LoRA, the baseline with the lowest dev NLL and the selected (else the default)
    MonteCLoRA, seed 0."""
    baselines = [r for r in rows if r["_name"].startswith(BASELINES)]
    wanted = {"LoRA": "lora"}
    if baselines:
        best = min(baselines, key=lambda r: r["nll"][0])
        wanted[f"{best['method']} (lowest-NLL baseline)"] = best["_name"]
    if chosen:
        wanted[f"monteclora {chosen} (selected)"] = chosen
    elif default:
        wanted[f"monteclora {default} (the default)"] = default
    curves = {}
    for label, name in wanted.items():
        found = results.runs_of(name, (0,))
        if found:
            p = runs.read_predictions(found[0])
            curves[label] = (normalised(p.predictive_probs), p.labels)
    return plot_reliability(curves) if curves else None


def default_setting(selections: dict) -> str | None:
    """The setting selected on the most tasks that compared several (ties: the lowest mean
    validation-NLL rank on those tasks); a task that ran one setting only tests it, and a task
    that selected none ranks nothing: neither has a vote."""
    voted = [(c, table) for c, table in selections.values() if c and len(table) > 1]
    chosen = [c for c, _ in voted]
    if not chosen:
        return None
    ranks: dict[str, list[int]] = {}
    for _, table in voted:
        for rank, r in enumerate(sorted(table, key=lambda r: r["val_nll"])):
            ranks.setdefault(r["setting"], []).append(rank)
    return min(sorted(set(chosen)), key=lambda s: (-chosen.count(s), np.mean(ranks[s])))


def goal_row(task: str, data: dict, default: str) -> dict | None:
    """Where the goals land on one task for the default setting (means over seeds)."""
    by_name = {r["_name"]: r for r in data["rows"]}
    mine, lora = by_name.get(default), by_name.get("lora")
    if mine is None or lora is None or lora["ece15"][0] == 0:
        return None
    eligible = {r["setting"]: r["eligible"] for r in data["selection"]}.get(default)
    ratio = mine["ece15"][0] / lora["ece15"][0]
    gap = mine["accuracy"][0] - lora["accuracy"][0]
    row = {"task": task, "eligible on validation": "yes" if eligible else "no"}
    row["ECE ÷ LoRA's"] = f"{ratio:.2f}"
    row["accuracy − LoRA's"] = f"{100 * gap:+.1f} pt"
    row["ECE goal"] = "met" if ratio <= 0.5 and gap >= -ACCURACY_SLACK else "not met"
    for other in ("mc-dropout", "temperature", "deep-ensemble-m4"):
        if other in by_name:
            row[f"NLL − {other}"] = f"{mine['nll'][0] - by_name[other]['nll'][0]:+.3f}"
    row["train time ÷ LoRA's"] = cell(mine["train_time"])
    return row


def goals_section(sections: dict, default: str | None) -> str:
    """Where the issue's goals land, per task, for the default MonteCLoRA setting."""
    if default is None:
        return "## Goals\n\nNo MonteCLoRA setting has been selected yet.\n"
    rows = [r for t, d in sections.items() if d and (r := goal_row(t, d, default))]
    if not rows:
        return "## Goals\n\nNo task has finished yet.\n"
    missing = [t for t in sections if t not in {r["task"] for r in rows}]
    absent = (
        f" Not run or not finished for it (or for LoRA) on: {', '.join(missing)}."
        if missing
        else ""
    )
    columns = list(dict.fromkeys(k for r in rows for k in r))
    met = sum(r["ECE goal"] == "met" for r in rows)
    return (
        f"## Goals\n\nThe default, selected on the validation splits of the tasks that "
        f"compared MonteCLoRA settings: **{default}** (`MonteCLoRAConfig.uncertainty()`). "
        "Where the goals land for it on each task (means over seeds; goal: ECE ≤ 0.5× LoRA's "
        "at accuracy within 0.5 points, NLL below MC dropout's and temperature scaling's, "
        "training time within 1.2× LoRA's; the deep ensemble of four LoRAs is the expensive "
        f"reference). The ECE goal is met on {met} of {len(rows)} tasks.{absent}\n\n"
        + format_table(rows, columns, markdown=True)
        + "\n"
    )


def ece_accuracy_figure(sections: dict) -> Figure | None:
    tasks = [t for t, s in sections.items() if s]
    if not tasks:
        return None
    fig = Figure(figsize=(5.0 * len(tasks), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    for ax, task in zip(axes, tasks, strict=True):
        for i, row in enumerate(sections[task]["rows"]):
            per_seed = row["_per_seed"]
            x, y = [s["accuracy"] for s in per_seed], [s["ece15"] for s in per_seed]
            style = {"color": f"C{i % 10}", "marker": "os^D"[i // 10 % 4]}
            ax.scatter(x, y, label=row["method"], s=22, **style)
        ax.set_title(task)
        ax.set_xlabel("accuracy (GLUE dev)")
        ax.set_ylabel("ECE (15 bins)")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def write_report(root: Path, doc: Path, args) -> None:
    """Write ``doc`` and its figures from the runs under ``root``."""
    figures = doc.parent / "calibration"
    figures.mkdir(parents=True, exist_ok=True)
    kept = ""
    if doc.is_file():
        old = doc.read_text()
        if READING[0] in old and READING[1] in old:
            kept = old[old.index(READING[0]) : old.index(READING[1]) + len(READING[1])]
    results = {t: TaskResults(root, t) for t in TASKS if t != "movie-reviews"}
    selections = {t: r.select_monteclora() for t, r in results.items()}
    default = default_setting(selections)
    sections, texts = {}, []
    for task, found in results.items():
        text, data = task_section(found, figures, doc.parent, selections[task], default)
        texts.append(text)
        sections[task] = data
    figure = ece_accuracy_figure(sections)
    if figure is not None:
        figure.savefig(figures / "ece-accuracy.png", dpi=110)
    header = Path(__file__).with_name("calibration_header.md").read_text()
    reading = kept or f"{READING[0]}\n{READING[1]}"
    body = [header, goals_section(sections, default), reading, *texts, shifted_section(root)]
    if figure is not None:
        body.append(
            "## ECE against accuracy\n\n![ECE against accuracy](calibration/ece-accuracy.png)\n"
        )
    doc.write_text("\n\n".join(part.strip() for part in body) + "\n")
