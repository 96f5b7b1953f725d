"""The Ray-free core of the ADC Serve app: load a verified model, check and decode images, run the
model, and shape answers. Everything here runs (and is unit-tested) without Ray.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from configs.errors import (
    InputError,
    IntegrityError,
    ModelUnavailableError,
    NotFoundError,
    PayloadTooLargeError,
)
from configs.models import ServeUserConfig
from data.artifacts import file_url
from data.model_format import MODEL_FILE, ModelMetadata, decide, read_metadata
from data.preprocess import decode_image, to_model_input

__all__ = [
    "AdcService",
    "LoadedModel",
    "Prepared",
    "THREADS_ENV",
    "answers",
    "check_count",
    "check_encoded",
    "check_sides",
    "decode",
    "decode_base64",
    "load_model",
    "preprocess",
    "to_channels",
    "torch_threads",
]

#: Classes listed in each answer's `top3`.
TOP_K = 3
#: Environment override of the torch intra-op thread count of a replica (default: its CPUs).
THREADS_ENV = "ADCP_SERVE_TORCH_THREADS"
_ALLOWED_IMAGES = "a PNG, JPEG, BMP or TIFF image"


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to answer: its verified program, metadata and where it came from.

    Immutable: a swap replaces the whole object, so a request that picked one up keeps a
    consistent (module, metadata) pair even while a newer model takes its place.
    """

    uri: str
    meta: ModelMetadata
    module: torch.nn.Module
    device: str = "cpu"
    #: The model file's own thresholds when `meta.thresholds` holds an override (else None).
    own_thresholds: dict[str, float] | None = None

    @property
    def model_id(self) -> str:
        return self.meta.model_id

    def with_thresholds(self, thresholds: dict[str, float] | None) -> LoadedModel:
        """This model deciding with `thresholds` in place of its own for the classes named
        (None: its own); the same program, so nothing is loaded again."""
        own = self.own_thresholds if self.own_thresholds is not None else self.meta.thresholds
        wanted = {**own, **thresholds} if thresholds else own
        if wanted == self.meta.thresholds and (thresholds is None) == (self.own_thresholds is None):
            return self
        meta = self.meta.model_copy(update={"thresholds": wanted})
        return replace(self, meta=meta, own_thresholds=dict(own) if thresholds else None)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) float32 for a float32 NCHW batch."""
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            logits = self.module(t.to(self.device, non_blocking=True))
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """The `GET /v1/model` answer."""
        m = self.meta
        return {
            "model_version": m.model_id,
            "name": m.name,
            "version": m.version,
            "uri": self.uri,
            "format": m.format,
            "classes": m.classes,
            "no_defect_classes": m.no_defect_classes,
            "thresholds": m.thresholds,
            "model_thresholds": self.own_thresholds if self.own_thresholds is not None else m.thresholds,
            "input": m.input.model_dump(),
            "metrics": m.metrics,
            "lineage": m.lineage,
            "created_at": m.created_at,
            "sha256": m.sha256,
        }


def load_model(uri: str, device: str = "cpu") -> LoadedModel:
    """Read `metadata.json` and `model.pt2` at `uri`, verify the program's sha256, load it onto
    `device` and run it once.

    Raises NotFoundError when either file is missing, IntegrityError when the program does not
    match the sha256 recorded in the metadata or cannot be loaded.
    """
    meta = read_metadata(uri)
    url = file_url(uri, MODEL_FILE)  # a model directory or a model artifact's manifest URL
    try:
        with fsspec.open(url, "rb") as f:
            blob = f.read()
    except FileNotFoundError as e:
        raise NotFoundError(
            f"No model program at {url}.",
            hint="Give the directory a training run exported "
            "(it holds model.pt2 and metadata.json).",
        ) from e
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.sha256:
        raise IntegrityError(
            f"{url} does not match its metadata: sha256 is {digest}, metadata.json records "
            f"{meta.sha256}.",
            hint="The model was modified or only partly copied; copy or export it again.",
        )
    try:
        module = torch.export.load(io.BytesIO(blob)).module().to(device)
    except Exception as e:  # torch raises many types for a bad archive
        raise IntegrityError(f"{url} is not a loadable torch.export program: {e}.") from e
    model = LoadedModel(uri=uri, meta=meta, module=module, device=device)
    # The first call of an exported module initialises lazily; pay that here, before any swap.
    spec = meta.input
    model.forward(np.zeros((1, spec.channels, spec.size, spec.size), np.float32))
    return model


def torch_threads(assigned_cpus: float | None) -> int:
    """Intra-op threads for a replica: `ADCP_SERVE_TORCH_THREADS`, else its CPUs (at least 1).

    More threads than CPUs makes torch's spinning workers fight each other and whatever else
    runs on the node; on a busy 2-core node 2 threads ran 3-30x slower than 1.
    """
    env = os.environ.get(THREADS_ENV)
    if env:
        return max(1, int(env))
    cpus = int(assigned_cpus or 0)
    return max(1, min(cpus, os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------------
# Input checks and decoding


def check_encoded(data: bytes, cfg: ServeUserConfig, name: str | None = None) -> bytes:
    """Reject an empty or oversized encoded image before any decoding."""
    label = f"Image {name!r}" if name else "The image"
    if not data:
        raise InputError(f"{label} is empty (0 bytes).", allowed=_ALLOWED_IMAGES, image=name)
    if len(data) > cfg.max_image_bytes:
        raise PayloadTooLargeError(
            f"{label} has {len(data)} bytes, more than max_image_bytes={cfg.max_image_bytes}.",
            allowed=f"at most {cfg.max_image_bytes} bytes per image",
            image=name,
        )
    return data


def check_count(n: int, cfg: ServeUserConfig) -> None:
    if n == 0:
        raise InputError("The request holds no image.", allowed="1 or more images")
    if n > cfg.max_images_per_request:
        raise PayloadTooLargeError(
            f"The request holds {n} images, more than max_images_per_request="
            f"{cfg.max_images_per_request}.",
            allowed=f"at most {cfg.max_images_per_request} images per request",
            hint="Split the images over several requests.",
        )


def check_sides(height: int, width: int, cfg: ServeUserConfig, name: str | None = None) -> None:
    if not (cfg.min_side <= height <= cfg.max_side and cfg.min_side <= width <= cfg.max_side):
        label = f"Image {name!r}" if name else "The image"
        raise InputError(
            f"{label} is {width}x{height} pixels (width x height).",
            allowed=f"width and height from {cfg.min_side} to {cfg.max_side} pixels",
            image=name,
        )


def decode(data: bytes, cfg: ServeUserConfig, channels: int, name: str | None = None) -> np.ndarray:
    """Check and decode one encoded image to uint8 pixels (H, W) or (H, W, 3).

    The side limits are checked on the header before decoding, so a small file that expands to
    a huge bitmap is refused without allocating it.
    """
    check_encoded(data, cfg, name)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as e:
        label = f"Image {name!r}" if name else "The image"
        raise InputError(
            f"{label} is far too large to decode ({e}).",
            allowed=f"width and height from {cfg.min_side} to {cfg.max_side} pixels",
            image=name,
        ) from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        label = f"Image {name!r}" if name else "The data"
        raise InputError(
            f"{label} is not a readable image ({len(data)} bytes, starts with {data[:8]!r}).",
            allowed=_ALLOWED_IMAGES,
            image=name,
        ) from e
    check_sides(height, width, cfg, name)
    try:
        return decode_image(data, channels=channels)
    except InputError as e:
        if name:
            e.details["image"] = name
        raise


def decode_base64(text: Any, what: str) -> bytes:
    """Bytes of a base64 string (a `data:...;base64,` prefix is allowed)."""
    if not isinstance(text, str):
        raise InputError(
            f"{what} is a {type(text).__name__}, not a string.",
            allowed="a base64-encoded image file as a JSON string",
        )
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(
            f"{what} is not valid base64 ({e}).",
            allowed="a base64-encoded image file (standard alphabet, with padding)",
        ) from e


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Raw pixels (H, W) or (H, W, C) with C in 1, 3, 4 -> what the model takes: (H, W) for one
    channel, (H, W, 3) for three. Converts like Pillow does for encoded images."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if channels == 1:
        if pixels.ndim == 2:
            return pixels
        mode = "RGB" if pixels.shape[2] == 3 else "RGBA"
        return np.asarray(Image.fromarray(pixels, mode).convert("L"))
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.shape[2] == 4:
        return np.asarray(Image.fromarray(pixels, "RGBA").convert("RGB"))
    return pixels


def preprocess(images: Sequence[np.ndarray], meta: ModelMetadata) -> np.ndarray:
    """Decoded uint8 images -> the model's float32 NCHW input (the training-time rule)."""
    return to_model_input(images, meta.input.size)


# ---------------------------------------------------------------------------------------------
# Answers


def answers(probs: np.ndarray, meta: ModelMetadata, ids: Sequence[str | None] | None = None):
    """One answer dict per row of probabilities (class, confidence, top3, decision, version)."""
    decided = decide(probs, meta)
    k = min(TOP_K, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out = []
    for i, (c, conf, decision) in enumerate(decided):
        row: dict[str, Any] = {}
        if ids is not None and ids[i] is not None:
            row["id"] = ids[i]
        row.update(
            {
                "class": meta.classes[c],
                "confidence": conf,
                "top3": [
                    {"class": meta.classes[int(j)], "confidence": float(probs[i, j])}
                    for j in top[i]
                ],
                "decision": decision,
                "model_version": meta.model_id,
            }
        )
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# The service: current model, limits, swap


Runner = Callable[[LoadedModel, np.ndarray], Awaitable[np.ndarray]]


async def run_in_thread(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    """Run the forward pass off the event loop (torch releases the GIL)."""
    return await asyncio.to_thread(model.forward, x)


@dataclass
class Prepared:
    """Images of one request, decoded and preprocessed for one specific model."""

    model: LoadedModel
    x: np.ndarray
    ids: list[str | None] = field(default_factory=list)


class AdcService:
    """What the HTTP layer talks to: the current model, the limits, and a model runner.

    `runner` runs a preprocessed batch on a model; the Serve deployment passes its
    `@serve.batch` method so concurrent requests share forward passes, tests pass nothing (a
    plain forward in a worker thread).
    """

    def __init__(
        self,
        runner: Runner | None = None,
        chunk: Callable[[], int] | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = ServeUserConfig()
        self.device = device
        self._model: LoadedModel | None = None
        self._runner = runner or run_in_thread
        self._chunk = chunk
        self._swap_lock = threading.Lock()
        #: Why the last reconfigure kept the previous model (None when it applied).
        self.reconfigure_error: dict[str, Any] | None = None

    # -- model and configuration ------------------------------------------------------------

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def require_model(self) -> LoadedModel:
        model = self._model
        if model is None:
            raise ModelUnavailableError(
                "No model is loaded.",
                hint="Set user_config.model_uri of the deployment to an exported model directory.",
            )
        return model

    def validate(self, user_config: dict[str, Any] | ServeUserConfig | None) -> ServeUserConfig:
        if isinstance(user_config, ServeUserConfig):
            return user_config
        return ServeUserConfig.model_validate(user_config or {})

    def reconfigure(self, user_config: dict[str, Any] | ServeUserConfig | None) -> ServeUserConfig:
        """Validate, load a changed model fully, then swap it in with one assignment.

        Until the new model has loaded and passed its checks the old one keeps answering;
        requests that already hold the old model finish with it. If the new configuration is
        invalid or its model fails to load while a model is serving, the old model and
        configuration stay, the failure is kept in `reconfigure_error` (shown by /healthz and
        /v1/model), and nothing is raised: raising here makes Serve replace the replica, which
        takes a working site down over a typo. With no model serving yet, the error is raised.
        Returns the configuration in effect.
        """
        with self._swap_lock:
            current = self._model
            try:
                cfg = self.validate(user_config)
                if cfg.model_uri is None:
                    new = None
                elif current is not None and current.uri == cfg.model_uri:
                    new = current.with_thresholds(cfg.thresholds)
                else:
                    new = load_model(cfg.model_uri, self.device).with_thresholds(cfg.thresholds)
            except Exception as e:  # any failure (a store's own errors too) must keep serving
                if current is None:
                    raise
                raw = user_config if isinstance(user_config, dict) else {}
                if isinstance(user_config, ServeUserConfig):
                    raw = user_config.model_dump()
                self.reconfigure_error = {
                    "error": type(e).__name__,
                    "detail": str(e),
                    "model_uri": raw.get("model_uri"),
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "serving": current.model_id,
                }
                return self.config
            self.config = cfg
            self._model = new
            self.reconfigure_error = None
        return cfg

    # -- inference --------------------------------------------------------------------------

    def prepare(
        self,
        images: Sequence[bytes | np.ndarray],
        ids: Sequence[str | None] | None = None,
    ) -> Prepared:
        """Check, decode and preprocess a request's images for the current model.

        Entries are encoded files (bytes) or raw uint8 pixels (already shape-checked).
        """
        model = self.require_model()
        cfg = self.config
        check_count(len(images), cfg)
        ids = list(ids) if ids is not None else [None] * len(images)
        channels = model.meta.input.channels
        pixels = [
            decode(img, cfg, channels, ids[i])
            if isinstance(img, (bytes, bytearray, memoryview))
            else to_channels(img, channels)
            for i, img in enumerate(images)
        ]
        return Prepared(model=model, x=preprocess(pixels, model.meta), ids=ids)

    async def probabilities(self, prep: Prepared) -> np.ndarray:
        """Probabilities for a prepared request, in chunks of at most the max batch size."""
        step = max(1, self._chunk() if self._chunk else len(prep.x))
        if len(prep.x) <= step:
            return await self._runner(prep.model, prep.x)
        parts = await asyncio.gather(
            *(self._runner(prep.model, prep.x[i : i + step]) for i in range(0, len(prep.x), step))
        )
        return np.concatenate(parts)

    async def classify(
        self, images: Sequence[bytes | np.ndarray], ids: Sequence[str | None] | None = None
    ) -> tuple[LoadedModel, np.ndarray, list[dict[str, Any]]]:
        """(model used, probabilities, answers) for the images, in input order."""
        prep = self.prepare(images, ids)
        probs = await self.probabilities(prep)
        return prep.model, probs, answers(probs, prep.model.meta, prep.ids)
