"""The accuracy gate behind ``--max-drop``."""

from __future__ import annotations

import math

from segcompile.errors import AccuracyGateError, SegcompileError


def check_gate(miou_drop: float, max_drop: float | None, source: str = "int8 model") -> None:
    """Raise :class:`AccuracyGateError` when ``miou_drop`` (percent points) exceeds ``max_drop``.

    ``None`` disables the gate. The message says by how much the budget was exceeded so a CI log
    line is enough to act on.
    """
    if max_drop is None:
        return
    if max_drop < 0 or math.isnan(max_drop):
        raise SegcompileError(f"--max-drop: must be a non-negative number of mIoU points, got {max_drop}")
    if math.isnan(miou_drop):
        raise AccuracyGateError(f"{source}: mIoU drop could not be measured (no labelled pixels)")
    if miou_drop > max_drop:
        raise AccuracyGateError(
            f"{source}: mIoU drop {miou_drop:.2f} points exceeds --max-drop {max_drop:.2f} "
            f"by {miou_drop - max_drop:.2f} points"
        )


def gate_record(miou_drop: float, max_drop: float | None) -> dict | None:
    """The ``gate`` entry of report.json (None when no gate was asked for)."""
    if max_drop is None:
        return None
    return {"max_drop": max_drop, "passed": bool(not math.isnan(miou_drop) and miou_drop <= max_drop)}
