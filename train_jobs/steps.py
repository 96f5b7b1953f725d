"""The training steps shared by `train_jobs.train` (Ray Train) and `train_jobs.tune` (Ray Tune):
the one-cycle learning-rate schedule, loss weights, one epoch of training, evaluation, and what an
epoch reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["class_weights", "epoch_metrics", "evaluate", "one_cycle_lr", "train_epoch"]


def one_cycle_lr(step: int, total_steps: int, max_lr: float, pct_start: float = 0.25) -> float:
    """The learning rate at `step` of a one-cycle schedule (torch's `OneCycleLR` with cosine
    annealing and its default div factors). A function of the step rather than a scheduler
    object, so a run resumed with more epochs than its checkpoint planned follows the new plan."""
    initial = max_lr / 25.0
    final = initial / 1e4
    step = min(max(step, 0), total_steps - 1)
    warm_end = float(pct_start * total_steps) - 1
    if step <= warm_end:
        start, end, pct = initial, max_lr, step / warm_end if warm_end > 0 else 1.0
    else:
        start, end, pct = max_lr, final, (step - warm_end) / max(total_steps - 1 - warm_end, 1e-9)
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def class_weights(classes: list[str], no_defect_classes: list[str], defect_weight: float) -> torch.Tensor:
    """Loss weights: `defect_weight` for real-defect classes, 1 for no-defect ones."""
    return torch.tensor([1.0 if c in no_defect_classes else defect_weight for c in classes])


def _confusion(logits: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    pred = logits.argmax(dim=1)
    return torch.bincount(y * classes + pred, minlength=classes * classes).reshape(classes, classes)


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    weights: torch.Tensor,
    max_lr: float,
    total_steps: int,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One pass over `batches` of (x, y); returns (loss sum, images seen, confusion, next step)."""
    n_cls = len(weights)
    device = weights.device
    model.train()
    loss_sum = torch.zeros((), device=device)
    seen = torch.zeros((), device=device)
    conf = torch.zeros(n_cls, n_cls, dtype=torch.long, device=device)
    for x, y in batches:
        x = x.contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = one_cycle_lr(step, total_steps, max_lr)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y, weight=weights, label_smoothing=0.02)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_sum += loss.detach() * len(x)
        seen += len(x)
        conf += _confusion(logits.detach(), y, n_cls)
    return loss_sum, seen, conf, step


def evaluate(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n_cls: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(confusion matrix, summed unweighted loss) of the model over `batches` of (x, y)."""
    model.eval()
    conf = torch.zeros(n_cls, n_cls, dtype=torch.long, device=device)
    loss = torch.zeros((), device=device)
    with torch.no_grad():
        for x, y in batches:
            logits = model(x.contiguous(memory_format=torch.channels_last))
            loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
            conf += _confusion(logits, y, n_cls)
    return conf, loss


def epoch_metrics(epoch, loss_sum, seen, conf_train, conf_val, val_loss, classes) -> dict[str, Any]:
    """What one epoch reports; `epoch` is 0-based, the reported `epoch` 1-based."""
    conf_train, conf_val = conf_train.cpu(), conf_val.cpu()
    val_n = max(1, int(conf_val.sum()))
    recall = conf_val.diag().float() / conf_val.sum(dim=1).clamp(min=1).float()
    out: dict[str, Any] = {
        "epoch": epoch + 1,
        "loss": float(loss_sum / seen.clamp(min=1)),
        "accuracy": float(conf_train.diag().sum()) / max(1, int(conf_train.sum())),
        "val_loss": float(val_loss) / val_n,
        "val_accuracy": float(conf_val.diag().sum()) / val_n,
    }
    out.update({f"val_recall/{name}": round(float(r), 4) for name, r in zip(classes, recall)})
    return out
