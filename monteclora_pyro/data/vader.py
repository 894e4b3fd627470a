"""The VADER sentiment domains, read from the ``vaderSentiment==3.2.1`` source distribution.

The human-rated sentences of Hutto & Gilbert (ICWSM 2014) ship in that archive; it is read from
a data directory or the cache (:func:`default_cache_dir`), downloaded with pip on first use.
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

from monteclora_pyro.data.local import decode, parse_tsv
from monteclora_pyro.data.spec import DataError, TaskSpec
from monteclora_pyro.data.text import TEXT

logger = logging.getLogger(__name__)

CACHE_ENV = "MONTECLORA_CACHE"
VADER_REQUIREMENT = "vaderSentiment==3.2.1"
VADER_ARCHIVE = "vaderSentiment-3.2.1.tar.gz"
VADER_INNER_ARCHIVE = "vaderSentiment-3.2.1/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_DOWNLOAD_TIMEOUT_S = 600
SPLIT_SEED = 0


def default_cache_dir() -> Path:
    """Return ``$MONTECLORA_CACHE``, else ``~/.cache/monteclora_pyro``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "monteclora_pyro"


def vader_download_command(dest: str | os.PathLike[str]) -> list[str]:
    """Return the pip command that downloads the VADER source distribution into ``dest``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        VADER_REQUIREMENT,
        "-d",
        str(dest),
    ]


def fetch_vader_archive(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of the VADER source archive, downloading it with pip if absent.

    Parameters
    ----------
    cache_dir : path-like, optional
        Where the archive lives; defaults to :func:`default_cache_dir`.

    Raises
    ------
    RuntimeError
        If the download fails; the message gives the command to run by hand.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    archive = cache / VADER_ARCHIVE
    if archive.is_file():
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s into %s", VADER_REQUIREMENT, cache)
    with tempfile.TemporaryDirectory(dir=cache) as staging:
        command = vader_download_command(staging)
        try:
            subprocess.run(
                command,
                check=True,
                capture_output=True,
                text=True,
                timeout=VADER_DOWNLOAD_TIMEOUT_S,
            )
            os.replace(Path(staging) / VADER_ARCHIVE, archive)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            detail = " ".join(detail.strip().splitlines()[-3:])
            manual = shlex.join(vader_download_command(cache))
            raise RuntimeError(
                f"could not download {VADER_REQUIREMENT} from PyPI ({detail}). "
                f"Run by hand: {manual} (so that {archive} exists), or put {VADER_ARCHIVE} "
                f"in a directory and set {CACHE_ENV} to it (or pass it as --data-dir)."
            ) from exc
    return archive


def read_vader_member(archive: str | os.PathLike[str], file_name: str) -> str:
    """Return the text of ``hutto_ICWSM_2014/<file_name>`` from the VADER source archive.

    The file sits in a tarball nested in the source distribution; both are read in memory.
    """
    source = f"{archive}:{VADER_INNER_ARCHIVE}"
    with tarfile.open(archive, "r:gz") as outer:
        inner_bytes = _read_tar_member(outer, VADER_INNER_ARCHIVE, str(archive))
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        member = f"hutto_ICWSM_2014/{file_name}"
        return decode(_read_tar_member(inner, member, source), f"{source}:{member}")


def _read_tar_member(tar: tarfile.TarFile, member: str, source: str) -> bytes:
    try:
        handle = tar.extractfile(member)
    except KeyError:
        handle = None
    if handle is None:
        names = ", ".join(tar.getnames()[:20])
        raise DataError(f"{source}: missing file {member}; archive holds: {names}")
    with handle:
        return handle.read()


def load_vader_splits(
    spec: TaskSpec, archive: str | os.PathLike[str]
) -> dict[str, datasets.Dataset]:
    """Load a VADER domain (``spec.hub_id is None``) from the source archive.

    Ratings ``>= 0.5`` are positive, ``<= -0.5`` negative, others dropped. The files are
    grouped by source and sorted within groups, so the rows are put in the order of a
    ``numpy.random.default_rng(0)`` permutation: the first N rows of any split are a random
    subset. With ``spec.layout.resplit`` the permutation is cut into the splits.
    """
    ((split, file_name),) = spec.layout.split_files
    source = f"{archive}:{spec.layout.folder}/{file_name}"
    columns, lines = parse_tsv(read_vader_member(archive, file_name), source, spec.layout)
    dataset = TEXT.build(spec, source, columns, lines, "line")
    if not spec.layout.resplit:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(dataset))
        return {split: dataset.select(order.tolist())}
    return split_by_fractions(dataset, spec.layout.resplit, seed=SPLIT_SEED)


def split_by_fractions(
    dataset: datasets.Dataset, fractions: Sequence[tuple[str, float]], seed: int
) -> dict[str, datasets.Dataset]:
    """Split ``dataset`` deterministically by a seeded permutation.

    Every split but the first gets ``round(fraction * n)`` rows; the first gets the rest.
    Rows are in permutation order, so the first N rows of a split are a random subset.
    """
    n = len(dataset)
    order = np.random.default_rng(seed).permutation(n)
    sizes = [round(fraction * n) for _, fraction in fractions[1:]]
    sizes.insert(0, n - sum(sizes))
    bounds = np.cumsum([0, *sizes])
    return {
        name: dataset.select(order[start:stop].tolist())
        for (name, _), start, stop in zip(fractions, bounds[:-1], bounds[1:], strict=True)
    }
