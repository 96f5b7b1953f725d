"""Fine-tuning: start a training run from the weights of an exported model (`--init-model URL`).

The exported model is the `torch.export` program `train_jobs.export` wrote (`model.pt2` beside
`metadata.json`, in a model folder or a model artifact). Its state dict (parameters and the batch
norm statistics) goes into a fresh `ADCNet` when the model was trained for this run's classes, in
this order, and has this run's width; otherwise the run trains from scratch, and the line it
prints (`InitWeights.line`, plus an `ADCP_WARNING` with code `init_model_unused`) says why.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import fsspec
import torch

from configs.errors import IntegrityError
from configs.protocol import Marker, format_line
from data.artifacts import file_url
from data.model_format import MODEL_FILE, read_metadata
from train_jobs.model import ADCNet

__all__ = ["InitWeights", "exported_state", "load_init_weights"]


@dataclass
class InitWeights:
    """What a run starts from: `state` (an ADCNet state dict) or None for scratch, and why."""

    url: str
    model_id: str
    state: dict[str, torch.Tensor] | None
    why: str

    @property
    def used(self) -> bool:
        return self.state is not None

    @property
    def line(self) -> str:
        """The human line a run prints about its start."""
        if self.used:
            return f"init model: fine-tuning from {self.model_id} ({self.why})"
        return f"init model: {self.model_id} not used, training from scratch: {self.why}"

    def report(self) -> None:
        """Print `line` (and an ADCP_WARNING line when the weights are not used)."""
        print(self.line, flush=True)
        if not self.used:
            print(format_line(Marker.WARNING, {"code": "init_model_unused", "model": self.model_id,
                                               "message": self.line}), flush=True)

    def lineage(self) -> dict[str, object]:
        """What the exported model records about its start (`parent_model` only when fine-tuned)."""
        out: dict[str, object] = {"init_model": {"model": self.model_id, "used": self.used, "why": self.why}}
        if self.used:
            out["parent_model"] = self.model_id
        return out


def exported_state(url: str) -> dict[str, torch.Tensor]:
    """The state dict of the `torch.export` program of the model at `url` (a model folder or a
    model artifact's manifest URL). IntegrityError when the file is not such a program."""
    model_url = file_url(url, MODEL_FILE)
    with fsspec.open(model_url, "rb") as f:
        blob = f.read()
    try:
        program = torch.export.load(io.BytesIO(blob))
    except Exception as e:  # torch raises many types for a file that is not a saved program
        raise IntegrityError(f"{model_url} is not a torch.export program: {type(e).__name__}: {e}") from e
    return {k: v.detach().clone() for k, v in program.state_dict.items()}


def load_init_weights(url: str, classes: list[str], width: int, in_channels: int = 1) -> InitWeights:
    """The weights of the exported model at `url` for a run of `classes` and `width`, or None
    with the reason when they cannot start it. NotFoundError when there is no model at `url`."""
    meta = read_metadata(url)
    model_id = meta.model_id
    if list(meta.classes) != list(classes):
        return InitWeights(url, model_id, None, f"it was trained for classes {meta.classes}, this run has {classes}")
    state = exported_state(url)
    stem = state.get("stem.0.weight")
    if stem is None:
        return InitWeights(url, model_id, None, "it is not an ADCNet (no stem.0.weight in its weights)")
    if int(stem.shape[0]) != width:
        return InitWeights(url, model_id, None, f"it has width {int(stem.shape[0])}, this run has width {width}")
    try:
        ADCNet(len(classes), in_channels=in_channels, width=width).load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200]
        return InitWeights(url, model_id, None, f"its weights do not fit an ADCNet of this run's shape: {first}")
    return InitWeights(url, model_id, state, f"classes {classes}, width {width}")
