"""Whether a run's guide converged, from the ``convergence`` records of its history.

At every evaluation the training loop appends to ``history.jsonl`` a record of kind
``"convergence"``: ``step``, ``epoch``, ``window`` (steps since the previous record),
``elbo_slope`` (least-squares slope of the per-example loss over the window over its absolute
mean: relative change per step), ``elbo_change`` (relative change of the mean loss between the
window's halves), ``param_change`` (``{name: ‖θ_end − θ_start‖ / max(‖θ_start‖, 1e-8)}`` per
variational parameter; ``{}`` without a guide), ``max_param_change`` and ``converged``. Only
the last record counts. Older runs have none.
"""

from __future__ import annotations

import math
from pathlib import Path

from monteclora_pyro import runs

__all__ = [
    "CONVERGENCE_KIND",
    "NO_RECORD",
    "convergence_message",
    "convergence_row",
    "convergence_warning",
    "last_convergence",
]

CONVERGENCE_KIND = "convergence"
NO_RECORD = "no convergence record"
_FIGURES = ("step", "window", "ELBO slope", "ELBO change", "max param change", "parameter")


def last_convergence(run_dir: str | Path) -> dict | None:
    """The last ``convergence`` record of a run's history, or ``None`` (older runs)."""
    records = runs.read_history(run_dir, kind=CONVERGENCE_KIND)
    return records[-1] if records else None


def _float(record: dict, key: str) -> float:
    value = record.get(key)
    return float(value) if isinstance(value, int | float) else math.nan


def _worst(record: dict) -> tuple[str | None, float]:
    """The variational parameter that moved most, and its relative change."""
    changes = record.get("param_change") or {}
    if not changes:
        return None, _float(record, "max_param_change")
    name = max(changes, key=lambda k: changes[k])
    return name, float(changes[name])


def convergence_warning(run: str, record: dict | None) -> str | None:
    """The warning for a run whose last record says it has not converged, else ``None``.

    Parameters
    ----------
    run : str
        The run's name.
    record : dict or None
        Its last convergence record.

    Returns
    -------
    str or None
        E.g. ``"the guide of RUN has not converged: max relative change of a variational
        parameter over the last 120 steps 0.23 (name), ELBO slope 1.2e-03 per step, ..."``.
    """
    if record is None or record.get("converged", True):
        return None
    window = record.get("window", "?")
    slope = f"ELBO slope {_float(record, 'elbo_slope'):.2e} per step"
    change = f"relative change of the mean loss {_float(record, 'elbo_change'):.2g}"
    name, value = _worst(record)
    if name is None:
        return (
            f"the training of {run} has not converged: over the last {window} steps "
            f"{slope}, {change}"
        )
    snr = record.get("grad_snr") or {}
    pushed = f", gradient signal-to-noise {snr[name]:.3g}" if name in snr else ""
    if snr:
        worst = max(snr, key=lambda k: snr[k])
        pushed = (
            f"; the gradient of {worst} is still systematic (signal-to-noise "
            f"{snr[worst]:.3g}; about 1 at an optimum)"
        )
    return (
        f"the guide of {run} has not converged: max relative change of a variational "
        f"parameter over the last {window} steps {value:.2g} ({name}), {slope}, {change}"
        f"{pushed}"
    )


def convergence_message(run: str, record: dict | None) -> str:
    """One line on the convergence of a run: its warning, the figures, or no record."""
    if record is None:
        return f"{run}: {NO_RECORD}"
    warning = convergence_warning(run, record)
    if warning is not None:
        return warning
    return (
        f"{run}: converged at step {record.get('step', '?')} (over the last "
        f"{record.get('window', '?')} steps ELBO slope {_float(record, 'elbo_slope'):.2e} per "
        f"step, max relative parameter change {_float(record, 'max_param_change'):.2g})"
    )


def convergence_row(run: str, method: str, record: dict | None) -> dict:
    """A plain table row: the figures of the last record, or None and ``NO_RECORD``."""
    row = {"run": run, "method": method}
    if record is None:
        return row | dict.fromkeys(_FIGURES) | {"converged": NO_RECORD}
    name, value = _worst(record)
    return row | {
        "step": record.get("step"),
        "window": record.get("window"),
        "ELBO slope": _float(record, "elbo_slope"),
        "ELBO change": _float(record, "elbo_change"),
        "max param change": value,
        "parameter": name or "–",
        "converged": "yes" if record.get("converged") else "no",
    }
