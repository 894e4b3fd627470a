"""Plain-text and Markdown tables from rows: the one table formatter of the package."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from monteclora_pyro.runs import MODES

__all__ = ["format_metrics_table", "format_table", "format_value"]

TABLE_METRICS = ("accuracy", "nll", "ece", "brier")
TOKEN_TABLE_METRICS = ("nll", "perplexity")  # next-token runs: per response token
REGRESSION_TABLE_METRICS = ("pearson", "spearman", "rmse", "nll", "coverage_90")


def format_value(value, digits: int = 4) -> str:
    """A table cell: floats with ``digits`` decimals, ``"nan"`` if not finite, ``"–"`` for None.

    Nonzero floats too small for ``digits`` decimals (below ``10**-(digits - 1)`` in magnitude)
    are written in scientific notation, so that e.g. a mutual information of 1e-12 nats does
    not read as 0.
    """
    if value is None:
        return "–"
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            return "nan"
        if value != 0 and abs(value) < 10.0 ** -(digits - 1):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _numeric(rows: Sequence[Mapping], column: str) -> bool:
    return any(
        isinstance(r.get(column), int | float | np.number) and not isinstance(r.get(column), bool)
        for r in rows
    )


def format_table(
    rows: Sequence[Mapping],
    columns: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    title: str | None = None,
    markdown: bool = False,
    digits: int = 4,
) -> str:
    """Render rows as an aligned plain-text table or a Markdown table.

    Parameters
    ----------
    rows : sequence of mappings
        One mapping of column to value per row; a missing value shows as ``"–"``.
    columns : sequence of str, optional
        Columns in order; the keys of the first row by default.
    headers : mapping of str to str, optional
        Header text per column; the column name by default.
    title : str, optional
        A line above the table.
    markdown : bool
        A Markdown table (unpadded cells) instead of plain text (numbers right-aligned).
    digits : int
        Decimals of floats.

    Returns
    -------
    str
    """
    if columns is None:
        columns = list(rows[0]) if rows else []
    headers = headers or {}
    head = [headers.get(c, c) for c in columns]
    cells = [[format_value(row.get(c), digits) for c in columns] for row in rows]
    lines = [] if title is None else [title]
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(head)]
    right = [_numeric(rows, c) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ).rstrip()

    header = line(head)
    lines += [header, "-" * len(header)]
    lines += [line(r) for r in cells]
    return "\n".join(lines)


def format_metrics_table(results: dict[str, dict]) -> str:
    """Both prediction modes of each named ``metrics.json``, one row per name and mode."""
    first = next(iter(results.values()))[MODES[0]]
    tables = (TABLE_METRICS, REGRESSION_TABLE_METRICS, TOKEN_TABLE_METRICS)
    columns = next((c for c in tables if set(c) <= first.keys()), ("nll",))
    rows = [
        {"run": name, "mode": mode} | {m: metrics[mode][m] for m in columns}
        for name, metrics in results.items()
        for mode in MODES
    ]
    return format_table(rows, ["run", "mode", *columns])
