"""The exported model's on-store format: what training writes and the Serve app loads.

A model directory (any fsspec URL) holds `model.pt2` (a `torch.export` program: float32 NCHW batch
in, logits out) and `metadata.json` (`ModelMetadata`). Serve never imports training code: these
two files are all it needs. A model artifact's manifest URL in an artifact store
(`<store>/artifacts/model/<name>/<version>.json`, see `data.artifacts`) works wherever a model
directory URL does.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any, Literal

import fsspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from configs.errors import IntegrityError, NotFoundError
from data.artifacts import file_url

__all__ = [
    "FORMAT",
    "METADATA_FILE",
    "MODEL_FILE",
    "InputSpec",
    "ModelMetadata",
    "decide",
    "decision_figures",
    "read_metadata",
]

MODEL_FILE = "model.pt2"
METADATA_FILE = "metadata.json"
FORMAT = "adcp-model/1"

Decision = Literal["defect", "false_defect", "review"]


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int
    channels: int
    dtype: str = "float32"
    layout: str = "NCHW"
    normalization: str
    scale: float
    resize: str = "bilinear"


class ModelMetadata(BaseModel):
    """Everything Serve and a reviewer need to know about an exported model."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    name: str
    version: str
    classes: list[str]
    no_defect_classes: list[str] = Field(
        description="Classes that mean 'nothing real': confident ones are filtered out."
    )
    input: InputSpec
    thresholds: dict[str, float] = Field(
        description="Per predicted class: the confidence at or above which it is auto-decided."
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    sha256: str = Field(description="sha256 of model.pt2")

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"


def decide(probs: np.ndarray, meta: ModelMetadata) -> list[tuple[int, float, Decision]]:
    """Per row of class probabilities: (class index, confidence, decision).

    Below its class threshold an image goes to `review` (a human looks); above it, a no-defect
    class is `false_defect` (filtered out) and any other class is a `defect`.
    """
    idx = probs.argmax(axis=1)
    out: list[tuple[int, float, Decision]] = []
    for i, c in enumerate(idx):
        name = meta.classes[int(c)]
        conf = float(probs[i, c])
        if conf < meta.thresholds.get(name, 1.0):
            decision: Decision = "review"
        elif name in meta.no_defect_classes:
            decision = "false_defect"
        else:
            decision = "defect"
        out.append((int(c), conf, decision))
    return out


def decision_figures(
    predicted: Sequence[str], decisions: Sequence[str], truth: Sequence[str], no_defect: Collection[str]
) -> dict[str, float]:
    """The figures a factory judges an ADC model by, from per-image answers and true labels:
    accuracy, automation rate (share decided without review), precision of the auto-decided
    images, escape rate (share of real defects auto-decided `false_defect`) and the image count."""
    n = len(truth)
    auto = [d != "review" for d in decisions]
    correct = [p == t for p, t in zip(predicted, truth)]
    real = [t not in no_defect for t in truth]
    escapes = sum(1 for d, r in zip(decisions, real) if r and d == "false_defect")
    return {
        "accuracy": sum(correct) / max(1, n),
        "automation_rate": sum(auto) / max(1, n),
        "auto_precision": sum(c for c, a in zip(correct, auto) if a) / sum(auto) if any(auto) else 1.0,
        "escape_rate": escapes / max(1, sum(real)),
        "images": n,
    }


def read_metadata(model_uri: str) -> ModelMetadata:
    """Load and validate `metadata.json` of the model at `model_uri`."""
    url = f"{model_uri.rstrip('/')}/{METADATA_FILE}"
    try:
        url = file_url(model_uri, METADATA_FILE)  # a model directory or a model artifact
        with fsspec.open(url, "r") as f:
            raw = json.load(f)
    except (FileNotFoundError, NotFoundError) as e:
        raise NotFoundError(
            f"No model at {model_uri}: {METADATA_FILE} is missing.",
            hint="Give the directory a training run exported (it holds model.pt2 and metadata.json).",
        ) from e
    try:
        return ModelMetadata.model_validate(raw)
    except ValidationError as e:
        raise IntegrityError(f"{url} is not valid model metadata: {e.errors()[0]['msg']}.") from e
