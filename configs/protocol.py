"""The protocol between the coordinator and the jobs it runs at a site, in one module both sides
import: the command line a job is started with (built from its config model, parsed back by the
job's own argparse) and the machine-readable lines the job prints.

A marker line is `<MARKER> <one JSON object>` on a line of its own: `ADCP_TRANSFER` (the
TransferResult of `python -m data.transfer`), `ADCP_ARTIFACTS` (`data.transfer list`),
`ADCP_CHECKPOINT` (one per checkpoint a training run published), `ADCP_WARNING` (a degraded run:
GPUs declared but absent, a checkpoint not published), `ADCP_MODEL` (the exported model),
`ADCP_TUNE` (a search's best trial) and `ADCP_GATE` (a gate's report, `python -m train_jobs.gate`).
Training runs also print one human-readable epoch line per epoch
(`epoch 3/12 loss=0.1234 acc=... val_acc=... (1.2s)`), which followers count.
"""

from __future__ import annotations

import json
import re
import shlex
from enum import Enum
from typing import Any

from pydantic import BaseModel

__all__ = ["GATE_MODULE", "TRAIN_MODULE", "TUNE_MODULE", "EpochLine", "Marker", "arguments", "entrypoint",
           "epoch_lines", "find_line", "format_epoch", "format_line", "marker_lines", "parse_line"]

TRAIN_MODULE = "train_jobs.train"
TUNE_MODULE = "train_jobs.tune"
GATE_MODULE = "train_jobs.gate"


class Marker(str, Enum):
    TRANSFER = "ADCP_TRANSFER"
    ARTIFACTS = "ADCP_ARTIFACTS"
    CHECKPOINT = "ADCP_CHECKPOINT"
    WARNING = "ADCP_WARNING"
    MODEL = "ADCP_MODEL"
    TUNE = "ADCP_TUNE"
    GATE = "ADCP_GATE"


# --- marker lines -----------------------------------------------------------------------------

def format_line(marker: Marker, payload: dict[str, Any]) -> str:
    """`<MARKER> {json}`: the line a job prints (with flush=True) for machines to read."""
    return f"{Marker(marker).value} {json.dumps(payload, sort_keys=True)}"


def parse_line(marker: Marker, line: str) -> dict[str, Any] | None:
    """The JSON object of a `marker` line, or None when `line` is not one (another line, or a
    marker whose rest is not a JSON object, e.g. a log line that only mentions the marker)."""
    head = f"{Marker(marker).value} "
    at = line.find(head)
    if at < 0 or line[:at].strip():
        return None
    try:
        value = json.loads(line[at + len(head):])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def marker_lines(marker: Marker, logs: str) -> list[dict[str, Any]]:
    """Every `marker` line of a job's logs, in order."""
    return [v for v in (parse_line(marker, ln) for ln in logs.splitlines()) if v is not None]


def find_line(marker: Marker, logs: str) -> dict[str, Any] | None:
    """The last `marker` line of a job's logs (what the job reported last), or None."""
    found = marker_lines(marker, logs)
    return found[-1] if found else None


# --- epoch lines ------------------------------------------------------------------------------

_EPOCH = re.compile(r"^epoch (\d+)/(\d+) (loss=.*)$", re.M)


class EpochLine(BaseModel):
    epoch: int
    epochs: int
    summary: str  # "loss=... acc=... val_acc=... (1.2s)"


def format_epoch(epoch: int, epochs: int, metrics: dict[str, Any]) -> str:
    """The line a training run prints after each epoch (1-based `epoch` of `epochs`)."""
    return (f"epoch {epoch}/{epochs} loss={metrics['loss']:.4f} acc={metrics['accuracy']:.4f} "
            f"val_acc={metrics['val_accuracy']:.4f} ({metrics['epoch_seconds']:.1f}s)")


def epoch_lines(logs: str) -> list[EpochLine]:
    """Every epoch line of a training run's logs, in order."""
    return [EpochLine(epoch=int(m[1]), epochs=int(m[2]), summary=m[3]) for m in _EPOCH.finditer(logs)]


# --- the command line -------------------------------------------------------------------------

def arguments(cfg: BaseModel) -> list[str]:
    """`--flag value` for every field of `cfg` that differs from its default, as the job's parser
    (one `--snake-case` flag per field: booleans are bare flags, lists comma-separated, dicts JSON)
    reads them back; `--dataset` and `--output` always. ValueError for a value no flag can say
    (False for a field whose default is True, a list item holding a comma)."""
    args: list[str] = []
    for name, value in cfg.model_dump(mode="json", exclude_defaults=True).items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue  # the parser's "not given" already
        if isinstance(value, bool):
            if not value:
                raise ValueError(f"{name}=False cannot be given on the command line (its default is True).")
            args.append(flag)
        elif isinstance(value, list):
            items = [str(v) for v in value]
            if any("," in v for v in items):
                raise ValueError(f"{name} holds an item with a comma: {items}")
            args += [flag, ",".join(items)]
        elif isinstance(value, dict):
            args += [flag, json.dumps(value, sort_keys=True)]
        else:
            args += [flag, str(value)]
    for required in ("dataset", "output"):
        if f"--{required}" not in args and required in type(cfg).model_fields:
            args += [f"--{required}", str(getattr(cfg, required))]
    return args


def entrypoint(cfg: BaseModel, module: str = TRAIN_MODULE) -> str:
    """`python -m <module> <arguments(cfg)>` as one shell-quoted command line (a TrainConfig for
    train_jobs.train, a TuneConfig for train_jobs.tune)."""
    return shlex.join(["python", "-m", module, *arguments(cfg)])
