"""The default MonteCLoRA setting the calibration study's validation splits select, and
where the issue's goals land for it (the Goals section of docs/calibration.md)."""

from __future__ import annotations

import numpy as np
from calibration import PACKAGE_DEFAULT
from calibration_scores import ACCURACY_SLACK, cell, selected_figure

from monteclora_pyro.analysis.tables import format_table

PRESET = "(`MonteCLoRAConfig.uncertainty()`, `--preset uncertainty`)"  # the package's default


def _voting(selections: dict) -> dict:
    """The selections of the tasks that selected one of several settings."""
    return {t: (c, table) for t, (c, table) in selections.items() if c and len(table) > 1}


def task_votes(selections: dict) -> dict[str, str]:
    """Each voting task's vote (:func:`default_setting`), by task."""
    voted = _voting(selections)
    if not voted:
        return {}
    common = set.intersection(*({r["setting"] for r in table} for _, table in voted.values()))
    votes = {}
    for task, (choice, table) in voted.items():
        if choice not in common:
            ran = [r for r in table if r["setting"] in common and r["eligible"]]
            choice = min(ran, key=lambda r: r["val_nll"])["setting"] if ran else None
        if choice:
            votes[task] = choice
    return votes


def default_setting(selections: dict) -> str | None:
    """The setting selected on the most tasks that compared several (ties: the lowest mean rank
    on those tasks, by validation NLL with the eligible settings first, as "best" means the
    lowest NLL at LoRA's accuracy), among the settings every such task ran: a task
    whose choice another did not run votes for its best eligible setting that all ran. A
    task that ran one setting only tests it, and a task that selected none ranks nothing:
    neither has a vote."""
    chosen = list(task_votes(selections).values())
    if not chosen:
        return None
    ranks: dict[str, list[int]] = {}
    for _, table in _voting(selections).values():
        for rank, r in enumerate(sorted(table, key=lambda r: (not r["eligible"], r["val_nll"]))):
            ranks.setdefault(r["setting"], []).append(rank)
    return min(sorted(set(chosen)), key=lambda s: (-chosen.count(s), np.mean(ranks[s])))


def goal_row(task: str, data: dict, default: str) -> dict | None:
    """Where the goals land on one task for the default setting (means over seeds); the
    accuracy is CoLA's own score there, MCC, as in the selection (:func:`selected_figure`)."""
    by_name = {r["_name"]: r for r in data["rows"]}
    mine, lora = by_name.get(default), by_name.get("lora")
    if mine is None or lora is None or lora["ece15"][0] == 0:
        return None
    eligible = {r["setting"]: r["eligible"] for r in data["selection"]}.get(default)
    ratio = mine["ece15"][0] / lora["ece15"][0]
    key = selected_figure(task)
    gap = mine[key][0] - lora[key][0]
    row = {"task": task, "eligible on validation": "yes" if eligible else "no"}
    row["ECE ÷ LoRA's"] = f"{ratio:.2f}"
    row["accuracy − LoRA's"] = f"{100 * gap:+.1f} pt" + ("" if key == "accuracy" else " MCC")
    row["ECE goal"] = "met" if ratio <= 0.5 and gap >= -ACCURACY_SLACK else "not met"
    for other in ("mc-dropout", "temperature", "deep-ensemble-m4"):
        if other in by_name:
            row[f"NLL − {other}"] = f"{mine['nll'][0] - by_name[other]['nll'][0]:+.3f}"
    row["train time ÷ LoRA's"] = cell(mine["train_time"])
    return row


def goals_section(
    sections: dict, selected: str | None, package: str = PACKAGE_DEFAULT, votes: dict | None = None
) -> str:
    """Where the issue's goals land, per task, for the setting the validation splits select
    and, where it differs, for the package's default (``package``) as well; ``votes``: each
    voting task's vote (:func:`task_votes`), named in the text."""
    if selected is None:
        return "## Goals\n\nNo MonteCLoRA setting has been selected yet.\n"
    settings = list(dict.fromkeys((selected, package)))
    rows = [
        {"setting": s} | r
        for s in settings
        for t, d in sections.items()
        if d and (r := goal_row(t, d, s))
    ]
    if not rows:
        return "## Goals\n\nNo task has finished yet.\n"
    if selected == package:
        chosen = (
            f"The default, selected on the validation splits of the tasks that compared "
            f"MonteCLoRA settings: **{selected}** {PRESET}."
        )
    else:
        chosen = (
            f"The validation splits of the tasks that compared MonteCLoRA settings select "
            f"**{selected}**; the package's default {PRESET} is still **{package}**, the "
            "study's earlier selection, until it is switched: both are shown."
        )
    if votes:
        cast = ", ".join(f"{t} {v}" for t, v in votes.items())
        chosen += (
            f" The tasks' votes: {cast} (ties: the lowest mean rank by validation NLL, "
            "eligible settings first)."
        )
    notes = []
    for s in settings:
        done = {r["task"] for r in rows if r["setting"] == s}
        met = sum(r["ECE goal"] == "met" for r in rows if r["setting"] == s)
        missing = [t for t in sections if t not in done]
        absent = (
            f"; not run or not finished (or LoRA not) on {', '.join(missing)}" if missing else ""
        )
        notes.append(f"{s}: the ECE goal is met on {met} of {len(done)} tasks{absent}.")
    if len(settings) == 1:
        rows = [{k: v for k, v in r.items() if k != "setting"} for r in rows]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return (
        f"## Goals\n\n{chosen} Where the goals land on each task (means over seeds; goal: ECE "
        "≤ 0.5× LoRA's at accuracy (CoLA: MCC) within 0.5 points, NLL below MC dropout's and "
        "temperature scaling's, training time within 1.2× LoRA's; the deep ensemble of four "
        f"LoRAs is the expensive reference). {' '.join(notes)}\n\n"
        + format_table(rows, columns, markdown=True)
        + "\n"
    )
