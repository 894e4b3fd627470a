"""Regenerate the golden runs of ``tests/test_golden.py``.

    python tests/golden/make_golden.py

Run it only when a change of behaviour is intended, and say so in the commit: the golden files
are the behaviour of the pipeline (training loop, evaluation, run files) at the time they were
made. The tiny backbone and the toy data are committed too, so that the check does not depend
on how a transformers release initialises a model.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import write_tiny_backbone, write_toy_sst2  # noqa: E402

from monteclora_pyro import MonteCLoRAConfig  # noqa: E402
from monteclora_pyro.training import TrainConfig, train  # noqa: E402

ASSETS = HERE / "assets"
RUNS = HERE / "runs"
METHODS = ("monteclora", "lora", "peft-lora", "peft-monteclora")
GOLDEN_FILES = ("metrics.json", "history.jsonl", "predictions.npz")


def golden_config(method: str, output_dir: Path) -> tuple[TrainConfig, MonteCLoRAConfig]:
    """The configuration of one golden run: 2 epochs of 3 steps on the toy task, 3 draws."""
    train_cfg = TrainConfig(
        model=str(ASSETS / "tiny-bert"),
        task="sst2",
        data_dir=str(ASSETS / "glue"),
        method=method,
        epochs=2,
        batch_size=16,
        lr=1e-2,
        guide_lr=None,  # one learning rate for all, as when the golden runs were made
        num_samples=3,
        seed=5,
        output_dir=str(output_dir),
    )
    return train_cfg, MonteCLoRAConfig.paper(r=4)


def make_assets() -> None:
    if not (ASSETS / "tiny-bert").is_dir():
        write_tiny_backbone(ASSETS / "tiny-bert")
        write_toy_sst2(ASSETS / "glue", n_train=40, n_dev=24)


def main() -> None:
    torch.set_num_threads(1)
    make_assets()
    for method in METHODS:
        out = RUNS / method
        scratch = HERE / "scratch" / method
        shutil.rmtree(scratch, ignore_errors=True)
        train(*golden_config(method, scratch), progress=False)
        out.mkdir(parents=True, exist_ok=True)
        for name in GOLDEN_FILES:
            shutil.copyfile(scratch / name, out / name)
    shutil.rmtree(HERE / "scratch")


if __name__ == "__main__":
    main()
