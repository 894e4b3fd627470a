"""docs/calibration.md from the run directories of ``studies/calibration.py``.

Every number is recomputed from the saved predictions; settings are selected on the carved
validation splits (``evaluations/{task}-train-validation/``), never on the reported GLUE dev
split. A hand-written reading between the ``READING`` markers of an existing document is kept.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
from calibration import (
    CHECKPOINT_MEMBERS,
    DEFAULT_GLR,
    ENSEMBLE_SEEDS,
    GUIDED,
    MONTECLORA,
    POST_HOC_DIRS,
    REPORTED,
    SEEDS,
    TASKS,
    TRAINED,
    baseline_named,
    source_of,
)
from calibration_goals import default_setting, goals_section, task_votes
from calibration_records import Records
from calibration_scores import ACCURACY_SLACK, cell, normalised, number, selected_figure
from calibration_shifted import shifted_section
from matplotlib.figure import Figure

from monteclora_pyro.analysis.plots import plot_reliability
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.data import get_task_spec

logger = logging.getLogger("calibration")

READING = ("<!-- READING -->", "<!-- /READING -->")
BASELINES = ("mc-dropout", "temperature", "laplace", "checkpoint-ensemble", "deep-ensemble-m3")
COLUMNS = (
    "method", "score", "accuracy", "ece15", "ece10", "nll", "brier", "sel_auc",
    "mutual_information", "train_nll", "train_time", "eval_time", "seeds",
)  # fmt: skip


class TaskResults:
    """Every finished or recorded run of one task (:class:`~calibration_records.Records`)."""

    def __init__(self, records: Records, task: str):
        self.records, self.task = records, task

    def figures(self, name: str, seeds=SEEDS) -> list[dict]:
        """The records of ``name``'s finished or recorded runs among ``seeds``."""
        found = (self.records.get(self.task, name, s) for s in seeds)
        return [f for f in found if f is not None]

    def validation(self, name: str) -> list[dict]:
        return [f["validation"] for f in self.figures(name) if f["validation"] is not None]

    def mean_validation(self, name: str, key: str) -> float:
        values = [number(v[key]) for v in self.validation(name)]
        return float(np.mean(values)) if values else math.nan

    def ratio(self, name: str, key: str, against: str | None = None) -> float:
        """Mean ``key`` of ``name``'s runs (its train or eval seconds) as a multiple of LoRA's
        ``against`` seconds (default: ``key``'s): those of the LoRA runs timed beside each run
        where recorded (``lora_seconds``), else the mean of LoRA's recorded runs."""
        if name == "lora" and against is None:
            return 1.0
        against = against or key
        lora = [f[against] for f in self.figures("lora", ENSEMBLE_SEEDS) if f[against] is not None]
        recorded = float(np.mean(lora)) if lora else math.nan
        found = [f for f in self.figures(name, ENSEMBLE_SEEDS) if f[key] is not None]
        if not found:
            return math.nan
        references = [number((f.get("lora_seconds") or {}).get(against, recorded)) for f in found]
        return float(np.mean([number(f[key]) for f in found]) / np.mean(references))

    def cost(self, name: str) -> tuple[float, float]:
        """Training and evaluation time as multiples of LoRA's."""
        if name in TRAINED:
            return self.ratio(name, "train_seconds"), self.ratio(name, "eval_seconds")
        members = re.search(r"-m(\d)$", name)
        if members:
            m = int(members.group(1))
            deep = name.startswith("deep")
            return (float(m) if deep else 1.0), float(m)
        source = self.ratio(source_of(name), "train_seconds")
        if name in GUIDED:  # a training run: its steps' and its evaluation's wall times
            return source + self.ratio(name, "train_seconds"), self.ratio(name, "eval_seconds")
        return source + self.ratio(name, "command_seconds", "train_seconds"), math.nan

    def row(self, name: str, label: str | None = None) -> dict | None:
        seeds = tuple(range(len(ENSEMBLE_SEEDS))) if name == "deep-ensemble-m3" else SEEDS
        if name == "deep-ensemble-m4":
            seeds = (0,)
        found = self.figures(name, seeds)
        if not found:
            return None
        per_seed = [
            {k: number(v) for k, v in f["dev"].items()} | {"train_nll": number(f["train_nll"])}
            for f in found
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

    def plug_in_row(self, name: str, label: str) -> dict | None:
        """``name``'s dev ECE and NLL of the plug-in prediction at the posterior mean against
        its posterior predictive's, and its MI: what the draws add to their mean."""
        found = [f for f in self.figures(name) if f.get("dev_plug_in")]
        if not found:
            return None
        row = {"method": label}
        for key, figures in (
            ("plug-in ECE", [f["dev_plug_in"]["ece15"] for f in found]),
            ("predictive ECE", [f["dev"]["ece15"] for f in found]),
            ("plug-in NLL", [f["dev_plug_in"]["nll"] for f in found]),
            ("predictive NLL", [f["dev"]["nll"] for f in found]),
            ("MI", [f["dev"]["mutual_information"] for f in found]),
        ):
            values = np.array([number(v) for v in figures])
            row[key] = cell(
                (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None)
            )
        return row | {"seeds": len(found)}

    def select_checkpoint_members(self) -> str | None:
        """The checkpoint ensemble's M with the lowest mean validation NLL."""
        names = [f"checkpoint-ensemble-m{m}" for m in CHECKPOINT_MEMBERS]
        nlls = {n: self.mean_validation(n, "nll") for n in names}
        nlls = {n: v for n, v in nlls.items() if not math.isnan(v)}
        return min(nlls, key=nlls.get) if nlls else None

    def selected_on(self) -> str:
        """The validation figure a setting must keep within 0.5 points of LoRA's
        (:func:`calibration_scores.selected_figure`)."""
        return selected_figure(self.task)

    def chance(self) -> float:
        """Mean validation :meth:`selected_on` figure of the constant majority-class prediction
        over LoRA's runs: the majority share for accuracy, 0 for MCC."""
        key = self.selected_on()
        found = [f["validation_chance"] for f in self.figures("lora")]
        values = [number(c[key]) for c in found if c is not None]
        return float(np.mean(values)) if values else math.nan

    def learned(self) -> bool:
        """Whether LoRA beats the majority class on validation by more than 0.5 points; where
        it does not, every constant predictor is "within 0.5 points" of it."""
        return self.mean_validation("lora", self.selected_on()) - self.chance() > ACCURACY_SLACK

    def select_monteclora(self) -> tuple[str | None, list[dict]]:
        """The MonteCLoRA setting with the lowest validation NLL at a :meth:`selected_on`
        figure within 0.5 points of LoRA's; none on a task LoRA has not learned."""
        key = self.selected_on()
        floor = self.mean_validation("lora", key) - ACCURACY_SLACK
        if not self.learned():
            floor = math.inf
        column = "val_accuracy" if key == "accuracy" else "val_score"
        table = []
        for name in MONTECLORA:
            figure, nll = (self.mean_validation(name, k) for k in (key, "nll"))
            if not math.isnan(nll):
                width = [number(f["q_width"]) for f in self.figures(name)]
                table.append(
                    {"setting": name, column: figure, "val_nll": nll}
                    | {"q(A) sd ÷ rms μ_A": float(np.mean(width))}
                )
        eligible = [r for r in table if r[column] >= floor]
        chosen = min(eligible, key=lambda r: r["val_nll"]) if eligible else None
        for r in table:
            r["eligible"] = r in eligible
            r["chosen"] = r is chosen
        return (chosen["setting"] if chosen else None), table


def row_label(name: str) -> str:
    """The method column of the row of ``name`` (a run name less its seed) in a task's table."""
    if name.startswith(("checkpoint-ensemble-m", "deep-ensemble-m")):
        base, m = name.rsplit("-m", 1)
        return f"{base} (m{m})" if base == "checkpoint-ensemble" else f"{base} (M={m})"
    if name == "default-temperature":
        return f"monteclora {DEFAULT_GLR} + temperature"
    return f"monteclora {name}" if name in MONTECLORA else name


def planned_rows(task: str) -> set[str]:
    """The rows (as :func:`_rows` names them) of the methods the study now runs on ``task``."""
    setting = TASKS[task]
    derived = [n for n in POST_HOC_DIRS if baseline_named(n) in setting.post_hoc]
    return {_row_name(row_label(n)) for n in (*setting.methods, *derived)}


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
        "lora", "mc-dropout", "temperature", "laplace", chosen_m, "deep-ensemble-m3",
        "deep-ensemble-m4", "peft-monteclora", *MONTECLORA, "default-temperature",
    ]  # fmt: skip
    names = [(name, row_label(name)) for name in names if name]
    rows = [r for name, label in names if (r := results.row(name, label))]
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
    plug_in = [r for name, label in names if (r := results.plug_in_row(name, label))]
    if plug_in:
        text.append(
            "What the draws add to their mean: ECE (15 bins) and NLL on GLUE dev of the plug-in "
            "prediction at the posterior mean (A = μ; for MC dropout, dropout off) against the "
            "posterior predictive's, with the mutual information:\n"
        )
        text.append(format_table(plug_in, list(plug_in[0]), markdown=True) + "\n")
    if selection:
        rows_sel = [
            {
                k: (("—" if math.isnan(v) else f"{v:.4f}") if isinstance(v, float) else v)
                for k, v in r.items()
            }
            for r in selection
        ]
        key = results.selected_on()
        figure_name = "accuracy" if key == "accuracy" else score_name
        text.append(
            f"MonteCLoRA settings on the validation split (lowest NLL among those whose "
            f"{figure_name} is within 0.5 points of LoRA's "
            f"{results.mean_validation('lora', key):.4f}; "
            "the last column, the Bayesian objective's q(A) sd over the root mean square of its "
            "mean μ_A, averaged over layers and seeds, says how much of A is noise):\n"
        )
        if not results.learned():
            text.append(
                f"LoRA's validation {figure_name} is within 0.5 points of the majority class's "
                f"({results.chance():.4f}): LoRA has not learned the task, so it selects "
                "no setting.\n"
            )
        column = "val_accuracy" if key == "accuracy" else "val_score"
        text.append(
            format_table(
                rows_sel,
                ["setting", column, "val_nll", "eligible", "chosen", "q(A) sd ÷ rms μ_A"],
                headers={"val_score": f"val_{score_name}"},
                markdown=True,
            )
            + "\n"
        )
    figure = reliability_figure(results, chosen, default, rows)
    data = {"rows": rows, "chosen": chosen, "selection": selection, "figures": {}}
    if figure is not None:
        path = figures / f"reliability-{task}.png"
        data["figures"][path] = figure
        text.append(f"![reliability, {task}]({path.relative_to(doc_dir)})\n")
    return "\n".join(text), data


KEPT = "*Kept from an earlier report:"  # how a kept section's note starts


def section_of(text: str, heading: str) -> str:
    """The section of a report's ``text`` under ``## heading``, up to the next ``## ``."""
    start = text.find(f"\n## {heading}\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + 1)
    return text[start + 1 : end if end > 0 else len(text)].strip()


def _row_name(label: str) -> str:
    """A row's method, a checkpoint ensemble's under one name whichever M was selected."""
    return re.sub(r"^checkpoint-ensemble \(m\d+\)$", "checkpoint-ensemble", label)


def _rows(section: str) -> dict[str, int]:
    """Seeds by method of the rows of a section's main table (the first with a method column);
    a checkpoint ensemble's row under one name whichever M its validation split selects."""
    lines = section.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("| method |")), None)
    if header is None:
        return {}
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    found = {}
    for line in lines[header + 2 :]:
        if not line.startswith("| "):
            break
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=False))
        found[_row_name(cells["method"])] = (
            int(cells["seeds"]) if cells.get("seeds", "").isdigit() else 0
        )
    return found


def lost_rows(old: str, new: str) -> set[str]:
    """The rows of section ``old`` that ``new`` lacks or holds over fewer seeds."""
    now = _rows(new)
    return {name for name, seeds in _rows(old).items() if now.get(name, -1) < seeds}


def method_rows(text: str) -> set[tuple[str, str]]:
    """(task, method) of every row of each task section's main table in a report's text."""
    return {(task, m) for task in REPORTED for m in _rows(section_of(text, task))}


def kept_section(old: str, lost: set[str], figure: bool = True) -> str:
    """The ``old`` section as it was, with a note naming the ``lost`` rows it keeps (those
    missing from the records, or recorded over fewer seeds); ``figure``: it has one."""
    heading, _, rest = old.partition("\n")
    rest = "\n".join(line for line in rest.splitlines() if not line.startswith(KEPT)).strip()
    also = (
        " (nor its figure) until they are; the Goals table and the ECE-against-accuracy figure "
        "read the recorded runs only"
        if figure
        else " until they are"
    )
    note = (
        f"{KEPT} some runs of its rows {', '.join(sorted(lost))} are neither in the run "
        f"directories nor recorded, so this section is not regenerated{also}.*"
    )
    return f"{heading}\n\n{note}\n\n{rest}"


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
        if (found := results.records.seed_probs(results.task, name)) is not None:
            curves[label] = (normalised(found[0]), found[1])
    return plot_reliability(curves) if curves else None


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


def write_report(records: Records, doc: Path, drop_unrecorded: bool = False) -> None:
    """Write ``doc`` and its figures from the ``records`` of the study's runs, and save them.

    A section of the existing ``doc`` (a task's, or the shifted domains') with a row whose
    runs are neither here nor recorded is kept as it was, with a note naming those rows, and
    its figure is not redrawn, unless ``drop_unrecorded``: nothing the records cannot rebuild
    is lost.
    """
    figures = doc.parent / "calibration"
    kept, old = "", ""
    if doc.is_file():
        old = doc.read_text()
        if READING[0] in old and READING[1] in old:
            kept = old[old.index(READING[0]) : old.index(READING[1]) + len(READING[1])]
    results = {t: TaskResults(records, t) for t in REPORTED}
    selections = {t: r.select_monteclora() for t, r in results.items()}
    default = default_setting(selections)
    sections, texts = {}, {}
    for task, found in results.items():
        texts[task], sections[task] = task_section(
            found, figures, doc.parent, selections[task], default
        )
    texts["Shifted domains"] = shifted_section(records)
    for heading, text in texts.items():
        previous = section_of(old, heading)
        lost = lost_rows(previous, text)
        if heading in sections and (dropped := lost - planned_rows(heading)):
            logger.warning("%s: dropped, no longer run on it: %s", heading, sorted(dropped))
            lost -= dropped
        if lost and not drop_unrecorded:
            logger.warning("%s: kept as it was; not regenerated: %s", heading, sorted(lost))
            texts[heading] = kept_section(previous, lost, heading in sections)
            sections.get(heading, {}).pop("figures", None)
    figures.mkdir(parents=True, exist_ok=True)
    for data in sections.values():
        for path, task_figure in data.get("figures", {}).items():
            task_figure.savefig(path, dpi=110)
    figure = ece_accuracy_figure(sections)
    if figure is not None:
        figure.savefig(figures / "ece-accuracy.png", dpi=110)
    header = Path(__file__).with_name("calibration_header.md").read_text()
    reading = kept or f"{READING[0]}\n{READING[1]}"
    body = [
        header,
        goals_section(sections, default, votes=task_votes(selections)),
        reading,
        *texts.values(),
    ]
    if figure is not None:
        body.append(
            "## ECE against accuracy\n\n![ECE against accuracy](calibration/ece-accuracy.png)\n"
        )
    doc.write_text("\n\n".join(part.strip() for part in body) + "\n")
    records.save()
