"""The gate's arithmetic: which held-out images calibrate and which test, the figures a model earns
on the test half, and the pass rule a challenger must meet against the champion it would replace.

Pure functions over class probabilities and labels (no I/O), so the rule is tested on hand-made
figures and `train_jobs.gate` only reads data, runs models and writes the report.

The figures of one model (`F`): `escape_rate`, `auto_precision`, `automation_rate`, `accuracy`,
`images` (the names `adcp demo` prints: `data.model_format.decision_figures`) and `per_class`
({class: {"recall", "precision", "n"}} over the classes the test labels hold; recall and precision
of the top class, whatever the decision; precision is None for a class never predicted).

The pass rule (`verdict`): the challenger's escape rate is not above the champion's nor above
`max_escape_rate`; its auto precision is at least `min_auto_precision`; its automation rate is not
below the champion's by more than `max_automation_drop`. Without a champion only the limits apply.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from configs.lines import GateLimits
from data.model_format import ModelMetadata, decide, decision_figures
from data.schema import split_of
from train_jobs import export

__all__ = ["GATE_SALT", "FIGURES", "figures", "gate_half", "held_out_recent", "recalibrate", "verdict"]

#: Salt of the calibration/test hash: not `split_of`'s, so the halves are independent of the
#: train/val/test split that already put every golden image in "test".
GATE_SALT = "adcp-gate/1:"
#: The figures the pass rule reads, in the order reports list them.
FIGURES = ("escape_rate", "auto_precision", "automation_rate")
_EPS = 1e-12  # figures are ratios of counts: equal ones must compare equal


def gate_half(image_id: str) -> Literal["calibration", "test"]:
    """Which half of the gate's data an image is in: a stable salted hash of its id, 50/50."""
    bucket = int.from_bytes(hashlib.sha256((GATE_SALT + image_id).encode()).digest()[:4], "big")
    return "calibration" if bucket % 2 == 0 else "test"


def held_out_recent(image_id: str) -> bool:
    """Whether a recent reviewed image may be scored: one training never fits on (its
    `split_of` is not "train"; retraining adds reviewed images by that same split)."""
    return split_of(image_id) != "train"


def recalibrate(probs: np.ndarray, truth: Sequence[str], meta: ModelMetadata,
                target_precision: float) -> dict[str, float]:
    """The model's per-class thresholds calibrated on (`probs`, `truth`) with the rule training
    uses (`train_jobs.export.calibrate_thresholds`). Images labelled with a class the model does
    not know are left out (they cannot be a correct answer of any threshold)."""
    index = {c: i for i, c in enumerate(meta.classes)}
    keep = [i for i, t in enumerate(truth) if t in index]
    labels = np.array([index[truth[i]] for i in keep], dtype=np.int64)
    return export.calibrate_thresholds(probs[keep], labels, list(meta.classes), target_precision,
                                       list(meta.no_defect_classes))


def figures(probs: np.ndarray, truth: Sequence[str], meta: ModelMetadata,
            thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """F of the model (`meta`, with `thresholds` replacing its own when given) on images of class
    probabilities `probs` and true labels `truth`."""
    if thresholds is not None:
        meta = meta.model_copy(update={"thresholds": {**meta.thresholds, **thresholds}})
    decided = decide(probs, meta) if len(truth) else []
    predicted = [meta.classes[c] for c, _, _ in decided]
    out: dict[str, Any] = decision_figures(predicted, [d for _, _, d in decided], list(truth),
                                           meta.no_defect_classes)
    per_class: dict[str, dict[str, Any]] = {}
    for c in sorted(set(truth)):
        n = sum(1 for t in truth if t == c)
        hits = sum(1 for p, t in zip(predicted, truth) if p == t == c)
        called = sum(1 for p in predicted if p == c)
        per_class[c] = {"recall": hits / n, "precision": hits / called if called else None, "n": n}
    out["per_class"] = per_class
    return out


def verdict(challenger: dict[str, Any], champion: dict[str, Any] | None,
            limits: GateLimits) -> tuple[bool, list[str], list[str]]:
    """(passed, the failed figures in `FIGURES` order, one reason per broken rule)."""
    failed: list[str] = []
    reasons: list[str] = []

    def fail(figure: str, reason: str) -> None:
        if figure not in failed:
            failed.append(figure)
        reasons.append(reason)

    esc = challenger["escape_rate"]
    if champion is not None and esc > champion["escape_rate"] + _EPS:
        fail("escape_rate", f"challenger escape {esc:.4f} > champion {champion['escape_rate']:.4f}")
    if esc > limits.max_escape_rate + _EPS:
        fail("escape_rate", f"challenger escape {esc:.4f} > limit {limits.max_escape_rate:.4f}")
    prec = challenger["auto_precision"]
    if prec < limits.min_auto_precision - _EPS:
        fail("auto_precision", f"challenger auto_precision {prec:.4f} < limit {limits.min_auto_precision:.4f}")
    if champion is not None:
        floor = champion["automation_rate"] - limits.max_automation_drop
        auto = challenger["automation_rate"]
        if auto < floor - _EPS:
            fail("automation_rate", f"challenger automation {auto:.4f} < champion "
                 f"{champion['automation_rate']:.4f} - {limits.max_automation_drop:.4f}")
    failed.sort(key=FIGURES.index)
    return not failed, failed, reasons
