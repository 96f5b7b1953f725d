"""The Open Inference Protocol (KServe / Triton "v2" REST) for the ADC model: request parsing,
metadata and response shaping. Ray-free.

Inputs: one tensor, either `BYTES` of shape [N] (or [N, 1]) whose elements are base64-encoded
image files, or `UINT8` / `FP32` raw pixels of shape [N, H, W] or [N, H, W, C] (C in 1, 3, 4),
intensities on the 0-255 scale, `data` flat in row-major order or nested.
Outputs: `label` BYTES [N], `confidence` FP32 [N], `decision` BYTES [N], and
`probabilities` FP32 [N, C].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from configs.errors import AdcpError, InputError
from configs.models import ServeUserConfig
from serve_apps.classifier import (
    LoadedModel,
    check_count,
    check_encoded,
    check_sides,
    decode_base64,
)

__all__ = [
    "MODEL_NAME",
    "OUTPUTS",
    "PLATFORM",
    "InferRequest",
    "error_body",
    "infer_response",
    "model_metadata",
    "parse_infer",
    "server_metadata",
]

MODEL_NAME = "adc"
PLATFORM = "pytorch_torchexport"
SERVER_NAME = "adcp"
SERVER_VERSION = "0.1.0"
INPUT_DATATYPES = ("BYTES", "UINT8", "FP32")
OUTPUTS = ("label", "confidence", "decision", "probabilities")
_ALLOWED_INPUT = (
    'one input with datatype "BYTES" and shape [N] (base64-encoded image files), or "UINT8" / '
    '"FP32" with shape [N, H, W] or [N, H, W, C] (C = 1, 3 or 4; pixel values 0-255)'
)


@dataclass
class InferRequest:
    """A parsed infer request: images as encoded bytes or uint8 pixel arrays."""

    id: str | None
    input_name: str
    images: list[bytes | np.ndarray]
    outputs: list[str]


def error_body(e: AdcpError) -> dict[str, Any]:
    """OIP error form `{"error": "<message>"}`, plus our structured fields."""
    body = e.to_json()
    body["error_type"] = body.pop("error")
    return {"error": str(e), **body}


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []}


def model_metadata(model: LoadedModel) -> dict[str, Any]:
    """`GET /v2/models/adc`: name, versions, platform, inputs and outputs."""
    spec = model.meta.input
    c = len(model.meta.classes)
    return {
        "name": MODEL_NAME,
        "versions": [model.model_id],
        "platform": PLATFORM,
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "confidence", "datatype": "FP32", "shape": [-1]},
            {"name": "decision", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, c]},
        ],
        "parameters": {
            "classes": model.meta.classes,
            "model_input": spec.model_dump(),
            # Instead of `image`, one input of raw pixels (0-255), flat row-major or nested.
            "alternative_inputs": [
                {"name": "pixels", "datatype": dt, "shape": shape}
                for dt in ("UINT8", "FP32")
                for shape in ([-1, -1, -1], [-1, -1, -1, -1])
            ],
        },
    }


def _shape(raw: Any) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and d >= 0 for d in raw):
        raise InputError(
            f"Input shape {raw!r} is not a list of non-negative integers.", allowed=_ALLOWED_INPUT
        )
    return raw


def _flat(data: Any, what: str) -> list[Any]:
    """`data` flattened (the protocol allows nested lists in row-major order)."""
    if not isinstance(data, list):
        raise InputError(f"{what} `data` is a {type(data).__name__}, not a list.")
    if data and isinstance(data[0], list):
        out: list[Any] = []
        stack = [data]
        # Iterative flatten, row-major; deep nesting of huge lists must not recurse per element.
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            else:
                out.append(item)
        return out
    return data


def parse_infer(body: Any, cfg: ServeUserConfig) -> InferRequest:
    """Check and unpack an infer request body; raises InputError (400/413) naming the problem."""
    if not isinstance(body, dict):
        raise InputError("The infer request is not a JSON object.", allowed='{"inputs": [...]}')
    req_id = body.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InputError(f'"id" is a {type(req_id).__name__}, not a string.')
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        n = len(inputs) if isinstance(inputs, list) else "no"
        raise InputError(f'The request has {n} "inputs".', allowed=_ALLOWED_INPUT)
    tensor = inputs[0]
    name = tensor.get("name", "image")
    dtype = tensor.get("datatype")
    shape = _shape(tensor.get("shape"))
    what = f"Input {name!r}"
    if dtype not in INPUT_DATATYPES:
        raise InputError(f"{what} has datatype {dtype!r}.", allowed=_ALLOWED_INPUT)
    if "data" not in tensor:
        raise InputError(
            f"{what} has no `data`.",
            allowed="JSON `data` (the binary tensor extension is not supported)",
        )
    data = _flat(tensor["data"], what)
    outputs = _requested_outputs(body.get("outputs"))

    if dtype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise InputError(f"{what} is BYTES with shape {shape}.", allowed="shape [N] or [N, 1]")
        check_count(shape[0], cfg)
        if len(data) != shape[0]:
            raise InputError(f"{what} has shape {shape} but {len(data)} elements in `data`.")
        images: list[bytes | np.ndarray] = [
            check_encoded(decode_base64(d, f"{what} element {i}"), cfg, f"{name}[{i}]")
            for i, d in enumerate(data)
        ]
        return InferRequest(req_id, name, images, outputs)

    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
        raise InputError(f"{what} is {dtype} with shape {shape}.", allowed=_ALLOWED_INPUT)
    check_count(shape[0], cfg)
    check_sides(shape[1], shape[2], cfg)
    expected = int(np.prod(shape))
    if len(data) != expected:
        raise InputError(
            f"{what} has shape {shape} ({expected} elements) but {len(data)} elements in `data`."
        )
    try:
        arr = np.asarray(data, dtype=np.float64 if dtype == "FP32" else np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise InputError(f"{what} `data` holds values that are not {dtype} numbers.") from e
    if arr.ndim != 1:
        raise InputError(f"{what} `data` is ragged (nested lists of different lengths).")
    if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.isfinite(arr).all()):
        raise InputError(
            f"{what} holds values from {arr.min()} to {arr.max()}.",
            allowed="pixel intensities from 0 to 255",
        )
    pixels = np.rint(arr).astype(np.uint8).reshape(shape)
    return InferRequest(req_id, name, list(pixels), outputs)


def _requested_outputs(raw: Any) -> list[str]:
    if raw is None:
        return list(OUTPUTS)
    if not isinstance(raw, list) or not all(isinstance(o, dict) for o in raw):
        raise InputError('"outputs" is not a list of objects.', allowed='[{"name": "label"}, ...]')
    names = [o.get("name") for o in raw]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InputError(f"Unknown outputs {unknown}.", allowed=f"outputs {list(OUTPUTS)}")
    return names or list(OUTPUTS)


def infer_response(
    req: InferRequest, model: LoadedModel, probs: np.ndarray, answers: list[dict[str, Any]]
) -> dict[str, Any]:
    n, c = probs.shape
    tensors = {
        "label": {"datatype": "BYTES", "shape": [n], "data": [a["class"] for a in answers]},
        "confidence": {
            "datatype": "FP32",
            "shape": [n],
            "data": [a["confidence"] for a in answers],
        },
        "decision": {"datatype": "BYTES", "shape": [n], "data": [a["decision"] for a in answers]},
        "probabilities": {
            "datatype": "FP32",
            "shape": [n, c],
            "data": probs.astype(np.float64).ravel().tolist(),
        },
    }
    out: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": model.model_id}
    if req.id is not None:
        out["id"] = req.id
    out["outputs"] = [{"name": name, **tensors[name]} for name in req.outputs]
    return out
