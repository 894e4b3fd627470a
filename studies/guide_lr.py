"""Which learning rate do the variational parameters need? A measured default for guide_lr.

    python studies/guide_lr.py --data-dir "$GLUE_DIR" [--output-dir runs/guide-lr]

Trains MiniLM-L6 on the first 1,000 SST-2 training sentences (3 epochs, batch 16, lr 5e-4) for
each objective and guide learning rate, evaluates on the first 436 dev sentences, and writes
``docs/guide_lr.md``: from the last convergence record of each run (the last epoch), the
largest relative change of a variational parameter, the largest gradient signal-to-noise ratio
over its noise threshold (above 1: the gradient is still systematic), the slope of the
objective, and whether it converged (docs/design.md §9.2); and the held-out metrics. Runs that
finished are read back; interrupted runs resume from their checkpoints. The choice rests on
convergence, not on the dev metrics.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from monteclora_pyro import metrics, runs
from monteclora_pyro.analysis.tables import format_table
from monteclora_pyro.config import MonteCLoRAConfig
from monteclora_pyro.io import GUIDE_FILE, read_tensors
from monteclora_pyro.training import TrainConfig, train
from monteclora_pyro.training.convergence import ELBO_TOLERANCE, snr_threshold

GUIDE_LRS = (5e-4, 1e-2, 5e-2)
OBJECTIVES = ("paper", "bayes")
COLUMNS = (
    "objective",
    "guide_lr",
    "max_param_change",
    "max_grad_excess",
    "elbo_slope",
    "converged",
    "accuracy",
    "nll",
    "mutual_information",
)


def run_one(objective: str, guide_lr: float, args) -> Path:
    out = Path(args.output_dir) / f"{objective}-glr{guide_lr:g}"
    if runs.has_predictions(out):
        return out
    cfg = TrainConfig(
        task="sst2",
        data_dir=args.data_dir,
        method="monteclora",
        epochs=3,
        batch_size=16,
        lr=5e-4,
        guide_lr=guide_lr,
        max_length=64,
        max_train_examples=1000,
        max_eval_examples=436,
        num_samples=8,
        seed=0,
        output_dir=str(out),
    )
    model_cfg = MonteCLoRAConfig.bayes() if objective == "bayes" else MonteCLoRAConfig()
    train(cfg, model_cfg, resume=(out / runs.CHECKPOINT_FILE).is_file(), progress=args.progress)
    return out


def row(objective: str, guide_lr: float, out: Path) -> dict:
    last = runs.read_history(out, kind="convergence")[-1]
    sizes = {name: t.numel() for name, t in read_tensors(out / GUIDE_FILE).items()}
    excess = max(s / snr_threshold(sizes[n]) for n, s in last["grad_snr"].items())
    steady = abs(last["elbo_change"]) < ELBO_TOLERANCE
    held_out = runs.read_metrics(out)["posterior_predictive"]
    decomposition = metrics.uncertainty_decomposition(runs.read_predictions(out).draw_probs)
    return {
        "objective": objective,
        "guide_lr": guide_lr,
        "max_param_change": last["max_param_change"],
        "max_grad_excess": excess,
        "elbo_slope": last["elbo_slope"],
        "converged": bool(excess < 1.0 and steady),
        "accuracy": held_out["accuracy"],
        "nll": held_out["nll"],
        "mutual_information": float(decomposition.epistemic.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="GLUE in its TSV layout")
    parser.add_argument("--output-dir", default="runs/guide-lr")
    parser.add_argument("--doc", default="docs/guide_lr.md")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [
        row(objective, lr, run_one(objective, lr, args))
        for objective in OBJECTIVES
        for lr in GUIDE_LRS
    ]
    table = format_table(rows, COLUMNS, markdown=True)
    command = 'python studies/guide_lr.py --data-dir "$GLUE_DIR"'
    Path(args.doc).write_text(
        "# The guide's learning rate\n\n"
        f"{__doc__.split(chr(10), 3)[3].strip()}\n\nRegenerate with `{command}`.\n\n{table}\n"
    )
    logging.info("%s", table)


if __name__ == "__main__":
    main()
