"""The shifted-domain section of the calibration study (studies/calibration_shifted.py): its
figures follow in closed form from synthetic movie-review runs, are recorded, and regenerate
the section where the runs are gone."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from monteclora_pyro import runs
from monteclora_pyro.experiments.temperature import scale

sys.path.insert(0, str(Path(__file__).parents[2] / "studies"))

import calibration
import calibration_shifted as shifted
from calibration_records import Records
from test_calibration_study import make_predictions, write_run

TASK, N_IN, N_OUT = shifted.TASK, 100, 50
# per domain: (correct of N_OUT, confidence) of every LoRA seed's shifted predictions
DOMAINS = {"tweets": (30, 0.7), "amazon": (40, 0.8), "nyt": (35, 0.6)}
LORA_CONFIDENCE = (0.70, 0.80, 0.90, 0.60)  # seed s's confidence on tweets (scales DOMAINS')
TEMPERATURE = 2.0


def _shifted(seed_confidence: float, domain: str) -> runs.Predictions:
    """A domain's predictions: the same labels and correct examples for every seed (seed 7),
    at a confidence that differs by seed on tweets only."""
    correct, confidence = DOMAINS[domain]
    confidence = seed_confidence if domain == "tweets" else confidence
    return make_predictions(N_OUT, correct, confidence, seed=7)


@pytest.fixture(scope="module")
def movie_runs(tmp_path_factory) -> Path:
    """Four LoRA runs (confident in domain, less so out of it), temperature scaling of the
    first three, and the ensemble of the four, each evaluated on every shifted domain."""
    root = tmp_path_factory.mktemp("movie")
    inside = make_predictions(N_IN, 90, 0.95, seed=1)
    for seed, tweets in enumerate(LORA_CONFIDENCE):
        run = write_run(root, TASK, "lora", seed, inside, inside)
        for domain in calibration.SHIFTED:
            target = runs.evaluation_dir(run, domain, "test")
            runs.write_predictions(target, _shifted(tweets, domain))
            runs.write_metrics(target, {"task": domain, "split": "test"})
        if seed in calibration.SEEDS:
            calibrated = write_run(root, TASK, "temperature", seed, inside, None)
            runs.write_metrics(calibrated, {"temperature": TEMPERATURE})
    write_run(root, TASK, "deep-ensemble-m4", 0, inside, None)
    return root


def _ece(correct: int, confidence: float) -> float:
    """ECE when every example has the same confidence: one bin."""
    return abs(correct / N_OUT - confidence)


def _scaled(confidence: float) -> float:
    return float(scale(np.array([confidence, 1 - confidence]), TEMPERATURE)[0])


def test_figures_follow_from_the_predictions_in_closed_form(movie_runs):
    figures = shifted.shifted_figures(movie_runs, "lora", 1)
    assert set(figures) == set(calibration.SHIFTED)
    for domain, (correct, confidence) in DOMAINS.items():
        confidence = LORA_CONFIDENCE[1] if domain == "tweets" else confidence
        assert figures[domain]["accuracy"] == correct / N_OUT
        assert figures[domain]["ece15"] == pytest.approx(_ece(correct, confidence), abs=1e-12)
        # every in-domain example (confidence 0.95) is surer than every shifted one (<= 0.9)
        assert figures[domain]["auroc"] == 1.0

    scaled = shifted.shifted_figures(movie_runs, "temperature", 2)["amazon"]
    assert scaled["ece15"] == pytest.approx(_ece(40, _scaled(0.8)), abs=1e-12)
    assert scaled["accuracy"] == 40 / N_OUT  # temperature leaves the decisions alone

    ensemble = shifted.shifted_figures(movie_runs, "deep-ensemble-m4", 0)["tweets"]
    mean = float(np.mean(LORA_CONFIDENCE))  # same decisions; the members' confidences averaged
    assert ensemble["ece15"] == pytest.approx(_ece(30, mean), abs=1e-12)
    assert shifted.shifted_figures(movie_runs, "mc-dropout", 0) == {}  # not run
    assert shifted.shifted_figures(movie_runs, "deep-ensemble-m3", 0) == {}  # not a row


def test_the_section_regenerates_from_the_records_without_the_runs(movie_runs, tmp_path):
    root, directory = tmp_path / "runs", tmp_path / "records"
    shutil.copytree(movie_runs, root)
    records = Records(directory, root)
    section = shifted.shifted_section(records)
    assert records.record_present() == 3 + 4 + 1  # temperature, LoRA, the ensemble
    records.save()
    lora = f"| lora | 3 | {np.mean([30 / N_OUT] * 3):.3f} ± 0.000 | "
    tweets_ece = [_ece(30, c) for c in LORA_CONFIDENCE[:3]]
    assert lora + f"{np.mean(tweets_ece):.3f} ± {np.std(tweets_ece, ddof=1):.3f} |" in section
    assert "| deep-ensemble-m4 | 1 | 0.600 | " in section
    assert "| temperature | 3 |" in section and "mc-dropout" not in section

    shutil.rmtree(root)  # a new machine
    records = Records(directory, root)
    assert shifted.shifted_section(records) == section
    assert records.recorded(TASK, "lora", 3) and records.recorded(TASK, "temperature", 0)
    assert not records.recorded(TASK, "mc-dropout", 0)


def test_a_run_missing_a_domain_is_not_recorded_as_done(movie_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(movie_runs, root)
    shutil.rmtree(runs.evaluation_dir(calibration.run_dir(root, TASK, "lora", 0), "nyt", "test"))
    records = Records(tmp_path / "records", root)
    assert set(records.get(TASK, "lora", 0)["shifted"]) == {"tweets", "amazon"}
    assert not records.recorded(TASK, "lora", 0)  # its nyt evaluation is still to run
    assert records.recorded(TASK, "lora", 1)
    assert not records.recorded(TASK, "deep-ensemble-m4", 0)  # reads lora-s0 on nyt too


def test_a_recorded_movie_review_run_is_neither_trained_nor_evaluated(tmp_path, monkeypatch):
    """A step recorded elsewhere is skipped; the runs here are evaluated where they lack a
    domain, those recorded and absent are not (no run to evaluate)."""
    commands = []
    monkeypatch.setattr(calibration, "Runner", lambda root, threads: commands.append)
    root = tmp_path / "study"
    here = calibration.run_dir(root, TASK, "lora", 3)
    runs.write_config(here, {"method": "lora", "output_dir": str(here)}, {})
    runs.write_metrics(here, {"task": TASK})
    args = calibration.argparse.Namespace(
        output_dir=str(root), data_dir=None, threads=1, workers=1, tasks=[TASK],
        methods=["lora"], post_hoc=["temperature", "deep-ensemble"],
    )  # fmt: skip
    calibration.run_study(args, lambda task, name, seed: (name, seed) != ("lora", 3))
    evaluated = sorted(c[c.index("--task") + 1] for c in commands if c[2] == "evaluate")
    assert [c for c in commands if c[2] != "evaluate"] == []
    assert evaluated == sorted(calibration.SHIFTED) and all(str(here) in c for c in commands)
    assert len(commands) == len(calibration.SHIFTED)


def test_a_domain_not_evaluated_here_keeps_its_recorded_figures(movie_runs, tmp_path):
    """Refreshing a present run whose shifted predictions are not all here (its LoRA run
    gone, an evaluation missing) does not lose the domains recorded before."""
    root, directory = tmp_path / "runs", tmp_path / "records"
    shutil.copytree(movie_runs, root)
    records = Records(directory, root)
    records.record_present()
    records.save()
    before = records.get(TASK, "temperature", 0)["shifted"]
    shutil.rmtree(calibration.run_dir(root, TASK, "lora", 0))  # what temperature-s0 scales
    lora = calibration.run_dir(root, TASK, "lora", 1)
    shutil.rmtree(runs.evaluation_dir(lora, "nyt", "test"))
    records = Records(directory, root)
    assert records.get(TASK, "temperature", 0)["shifted"] == before
    assert set(records.get(TASK, "lora", 1)["shifted"]) == set(calibration.SHIFTED)
    assert records.recorded(TASK, "temperature", 0) and records.recorded(TASK, "lora", 1)


def test_the_study_skips_the_movie_review_runs_its_records_hold(movie_runs, tmp_path, monkeypatch):
    """``run_study`` with the records' own predicate where the runs are gone: nothing to train
    or evaluate but what the records lack (here the deep ensembles of three, not recorded)."""
    commands = []
    monkeypatch.setattr(calibration, "Runner", lambda root, threads: commands.append)
    root, directory = tmp_path / "runs", tmp_path / "records"
    shutil.copytree(movie_runs, root)
    records = Records(directory, root)
    records.record_present()
    records.save()
    shutil.rmtree(root)
    args = calibration.argparse.Namespace(
        output_dir=str(root), data_dir=None, threads=1, workers=1, tasks=[TASK],
        methods=["lora"], post_hoc=["temperature", "deep-ensemble"],
    )  # fmt: skip
    calibration.run_study(args, Records(directory, root).recorded)
    assert not [c for c in commands if c[2] == "evaluate" or c[1] == "calibrate"]
    outputs = sorted(Path(c[c.index("--output-dir") + 1]).name for c in commands)
    trained = [f"lora-s{s}" for s in calibration.ENSEMBLE_SEEDS]  # the ensembles' members
    assert outputs == sorted([*trained, *(f"deep-ensemble-m3-s{s}" for s in range(4))])


def test_the_packages_default_is_evaluated_on_the_shifted_domains_once_it_ran(
    tmp_path, monkeypatch
):
    """The first round trains the default around each LoRA run; a second evaluates it on
    every shifted domain (its runs did not exist when the first round was listed)."""
    commands, inside = [], make_predictions(N_IN, 90, 0.95, seed=1)

    def run(command: list[str]) -> bool:
        commands.append(command)
        if command[2] == "train":  # finishes at once
            out = Path(command[command.index("--output-dir") + 1])
            name, seed = out.name.rsplit("-s", 1)
            write_run(out.parents[1], TASK, name, int(seed), inside, None)
        return True

    monkeypatch.setattr(calibration, "Runner", lambda root, threads: run)
    default = calibration.PACKAGE_DEFAULT
    args = calibration.argparse.Namespace(
        output_dir=str(tmp_path / "study"), data_dir=None, threads=1, workers=1, tasks=[TASK],
        methods=["lora"], post_hoc=[default],
    )  # fmt: skip
    calibration.run_study(args)
    trained = [i for i, c in enumerate(commands) if c[2] == "train" and f"/{default}-s" in c[-1]]
    evaluated = [
        (i, Path(c[3]).name, c[c.index("--task") + 1])
        for i, c in enumerate(commands)
        if c[2] == "evaluate" and f"/{default}-s" in c[3]
    ]
    assert len(trained) == len(calibration.SEEDS)
    expected = [(f"{default}-s{s}", d) for s in calibration.SEEDS for d in calibration.SHIFTED]
    assert sorted(e[1:] for e in evaluated) == sorted(expected)
    assert min(e[0] for e in evaluated) > max(trained)
