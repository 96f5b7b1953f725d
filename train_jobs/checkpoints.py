"""Training state in a checkpoint folder (`state.pt`: model and optimizer state, epoch, step,
classes): written after each epoch, read back to resume a run or to start one from another run's
checkpoint (a folder URL, or a checkpoint artifact's manifest URL).
"""

from __future__ import annotations

import io
import os
from typing import Any

import fsspec
import torch

from configs.errors import NotFoundError
from data.artifacts import file_url

__all__ = ["STATE_FILE", "read_checkpoint_state", "restore", "save_state"]

STATE_FILE = "state.pt"


def save_state(folder: str, model: torch.nn.Module, optimizer, *, epoch: int, step: int, classes: list[str]) -> None:
    """Write a checkpoint's `state.pt`: model and optimizer state, after 0-based `epoch`."""
    inner = model.module if hasattr(model, "module") else model
    torch.save({"model": inner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                "classes": classes}, os.path.join(folder, STATE_FILE))


def restore(model: torch.nn.Module, optimizer, state: dict[str, Any]) -> tuple[int, int]:
    """Load a checkpoint's state into `model` and `optimizer`; returns (first epoch to train,
    0-based; optimizer steps done)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    # Checkpoints written before the schedule became a function of the step kept a scheduler's.
    step = state.get("step", (state.get("schedule") or {}).get("last_epoch", 0))
    return state["epoch"] + 1, int(step)


def read_checkpoint_state(url: str) -> dict[str, Any]:
    """The training state of a checkpoint: a checkpoint folder URL (or path), or a checkpoint
    artifact's manifest URL. NotFoundError when there is none there."""
    try:
        with fsspec.open(file_url(url, STATE_FILE), "rb") as f:
            blob = f.read()
    except (FileNotFoundError, NotFoundError) as e:
        raise NotFoundError(
            f"No checkpoint at {url}: {STATE_FILE} is missing.",
            hint="Give a checkpoint folder, or a checkpoint artifact's manifest URL "
            "(<store>/artifacts/checkpoint/<name>/<epoch>.json).",
        ) from e
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
