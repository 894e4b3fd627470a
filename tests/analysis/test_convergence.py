"""Convergence records of fabricated histories: warnings, the table, analyze and the report."""

from __future__ import annotations

import shutil

import matplotlib

matplotlib.use("Agg")

import pytest
from test_report import make_run

from monteclora_pyro import runs
from monteclora_pyro.analysis.analyze import analyze_runs
from monteclora_pyro.analysis.convergence import (
    NO_RECORD,
    convergence_message,
    convergence_row,
    convergence_warning,
    last_convergence,
)
from monteclora_pyro.analysis.summary import format_summary, summary_tables

COV = "bert.encoder.layer.0.attention.self.query.covariance_scale_tril"


def record(step: int, converged: bool, guide: bool = True) -> dict:
    """A convergence record as the training loop writes it at an evaluation."""
    changes = {COV: 0.23, "bert.encoder.layer.0.attention.self.query.weights_conc": 0.01}
    return {
        "kind": "convergence",
        "step": step,
        "epoch": step // 20,
        "window": 120,
        "elbo_slope": 1.2e-3 if not converged else 1e-6,
        "elbo_change": 0.08 if not converged else 1e-4,
        "param_change": changes if guide else {},
        "max_param_change": 0.23 if guide else 0.0,
        "converged": converged,
    }


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """A MonteCLoRA run whose guide did not converge, a converged LoRA run, an older run."""
    root = tmp_path_factory.mktemp("convergence")
    mc = make_run(root, "mc-run", "monteclora", 0)
    old = shutil.copytree(mc, root / "old-run")  # a restart evaluated on the same examples
    runs.append_history(mc, record(120, True))
    runs.append_history(mc, record(240, False))
    lora = make_run(root, "lora-run", "lora", 1)
    runs.append_history(lora, record(240, True, guide=False))
    return mc, lora, old


def test_last_record_and_warning(run_dirs):
    mc, lora, old = run_dirs
    last = last_convergence(mc)
    assert last["step"] == 240 and last["converged"] is False
    assert last_convergence(old) is None
    warning = convergence_warning("mc-run", last)
    assert warning == (
        "the guide of mc-run has not converged: max relative change of a variational parameter "
        f"over the last 120 steps 0.23 ({COV}), ELBO slope 1.20e-03 per step, relative change of "
        "the mean loss 0.08"
    )
    assert convergence_message("mc-run", last) == warning
    assert convergence_warning("lora-run", last_convergence(lora)) is None
    assert convergence_warning("old-run", None) is None
    assert convergence_message("old-run", None) == f"old-run: {NO_RECORD}"
    assert "converged at step 240" in convergence_message("lora-run", last_convergence(lora))
    no_guide = convergence_warning("lora-run", record(240, False, guide=False))
    assert no_guide.startswith("the training of lora-run has not converged: over the last 120")
    assert "variational parameter" not in no_guide


def test_rows_and_table(run_dirs):
    mc, lora, old = run_dirs
    row = convergence_row("mc-run", "monteclora", last_convergence(mc))
    assert row["converged"] == "no" and row["parameter"] == COV
    assert row["max param change"] == 0.23 and row["ELBO slope"] == 1.2e-3
    assert row["window"] == 120 and row["step"] == 240
    lora_row = convergence_row("lora-run", "lora", last_convergence(lora))
    assert lora_row["converged"] == "yes" and lora_row["parameter"] == "–"
    assert lora_row["max param change"] == 0.0
    old_row = convergence_row("old-run", "monteclora", None)
    assert list(old_row) == list(row) and old_row["converged"] == NO_RECORD
    assert old_row["step"] is None and old_row["parameter"] is None
    tables = summary_tables([old, mc, lora])
    assert [r["converged"] for r in tables["convergence"]] == [NO_RECORD, "no", "yes"]
    text = format_summary(tables)
    # the columns of every row, even when the first run has no record
    assert "convergence\nrun" in text and "ELBO slope" in text and "0.0012" in text


def test_analyze_warns_and_the_report_shows_the_table(run_dirs, tmp_path):
    copies = [
        shutil.copytree(d, tmp_path / d.name) for d in (run_dirs[0], run_dirs[2], run_dirs[1])
    ]
    analysis = analyze_runs(copies, tmp_path / "out")
    mc, lora = analysis.methods
    assert mc.method == "monteclora" and len(mc.run_dirs) == 2
    assert len(mc.warnings) == 1 and mc.warnings[0].startswith("the guide of mc-run has not")
    assert mc.convergence[1] == f"old-run: {NO_RECORD}"
    assert lora.warnings == [] and "converged at step 240" in lora.convergence[0]
    assert mc.heldout.name == "2 restarts pooled" and mc.heldout.num_draws == 16
    page = analysis.report.read_text()
    assert "<h2>Convergence</h2>" in page and NO_RECORD in page
    assert f">{COV}<" in page and ">0.0012<" in page and ">1.00e-06<" in page
