"""How the calibration study (studies/calibration.py) runs its ``monteclora`` commands, and
how it tells that a finished run was trained with other settings than it now gives."""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from monteclora_pyro.cli import build_parser
from monteclora_pyro.cli.options import configs

logger = logging.getLogger("calibration")


class Runner:
    """Runs ``monteclora`` commands in worker processes and logs each one."""

    def __init__(self, root: Path, threads: int):
        self.log = root / "commands.log"
        self.env = os.environ | {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
        }

    def __call__(self, command: list[str]) -> bool:
        started = time.perf_counter()
        argv = [sys.executable, "-m", "monteclora_pyro", *command[1:]]
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        with self.log.open("a") as log:
            log.write(f"{shlex.join(command)}  # rc={result.returncode} {seconds:.0f}s\n")
        if result.returncode != 0:
            logger.error("failed (%s): %s\n%s", result.returncode, shlex.join(command),
                         result.stderr[-2000:])  # fmt: skip
            return False
        logger.info("done in %.0f s: %s", seconds, shlex.join(command))
        return True


MOVABLE = ("output_dir", "data_dir", "from_run")  # where a run and what it reads live may change
RESOLVED = ("target_modules", "modules_to_save")  # None: the backbone's, saved resolved


def stale_settings(command: list[str], saved: dict) -> list[str]:
    """The settings of a finished run's ``saved`` configuration that differ from ``command``'s."""
    train, model = configs(build_parser().parse_args(command[1:]))
    wanted = {"train": dataclasses.asdict(train), "monteclora": model.to_dict()}
    return [
        f"{group}.{key}={saved[group][key]!r} (the study sets {value!r})"
        for group, values in wanted.items()
        for key, value in values.items()
        if key not in MOVABLE
        and not (key in RESOLVED and value is None)
        and key in saved[group]
        and saved[group][key] != value
    ]
