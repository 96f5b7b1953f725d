"""The HTTP face of the ADC app: a FastAPI app built around an `AdcService`.

The Serve deployment builds it on each replica (`__serve_build_asgi_app__`); unit tests build it
around a plain service and call it through an ASGI transport, without Ray.

Routes: `POST /v1/classify`, `POST /v1/classify/batch`, `GET /v1/model`, `GET /healthz`, and the
Open Inference Protocol v2 under `/v2`.

Requests may say where an image came from (`product`, `aoi_machine`, `panel_id`): as JSON fields
next to `image` (per item in a batch, or once for all), multipart form fields, or the headers
`X-ADC-Product`, `X-ADC-AOI-Machine`, `X-ADC-Panel-Id`. They do not change the answer; with a
`Recorder` (serve_apps.recorder) they go with the image into the site's review queue.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from configs.errors import (
    AdcpError,
    InputError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from configs.models import ServeUserConfig
from serve_apps import oip
from serve_apps.classifier import AdcService, answers, check_count, check_encoded, decode_base64
from serve_apps.metrics import AppMetrics
from serve_apps.recorder import Recorder, RequestMeta, dataset_line
from serve_apps.shadow import ShadowRunner

__all__ = [
    "META_FIELDS",
    "META_HEADERS",
    "RAW_TYPES",
    "body_limit",
    "build_api",
]

RAW_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/octet-stream")
SINGLE_FIELDS = ("file", "image")
_SINGLE_ALLOWED = (
    f"Content-Type {', '.join(RAW_TYPES)} with the image file as the body, multipart/form-data "
    'with the file in field "file" or "image", or application/json {"image": "<base64>"}'
)
_BATCH_ALLOWED = (
    "multipart/form-data with one file part per image, or application/json "
    '{"images": ["<base64>", ...]} (items may also be {"id": "...", "data": "<base64>"})'
)
#: Where an image came from: JSON/form field -> request header (contract §6).
META_FIELDS = ("product", "aoi_machine", "panel_id")
META_HEADERS = {"product": "X-ADC-Product", "aoi_machine": "X-ADC-AOI-Machine", "panel_id": "X-ADC-Panel-Id"}
_META_MAX = 255
#: Room for multipart headers and boundaries, and for JSON around base64 payloads.
_OVERHEAD_PER_IMAGE = 4096
_OVERHEAD = 64 * 1024


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def body_limit(cfg: ServeUserConfig, images: int, *, base64: bool = False) -> int:
    """The most bytes a request body for `images` images may have."""
    per_image = cfg.max_image_bytes * 4 // 3 + 4 if base64 else cfg.max_image_bytes
    return images * (per_image + _OVERHEAD_PER_IMAGE) + _OVERHEAD


def _too_large(limit: int, size: int | None = None) -> PayloadTooLargeError:
    what = f"has {size} bytes" if size is not None else "is longer"
    return PayloadTooLargeError(
        f"The request body {what}; at most {limit} bytes are allowed for this request.",
        allowed=f"a body of at most {limit} bytes",
        hint="max_image_bytes and max_images_per_request in the deployment's user_config set it.",
    )


def _check_length(request: Request, limit: int) -> None:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit, int(length))


def _capped(request: Request, limit: int) -> Request:
    """The same request, whose body fails with 413 once more than `limit` bytes arrive."""
    _check_length(request, limit)
    total = 0
    receive = request.receive

    async def capped_receive():
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise _too_large(limit)
        return message

    return Request(request.scope, capped_receive)


async def _read_body(request: Request, limit: int) -> bytes:
    return await _capped(request, limit).body()


async def _read_json(request: Request, limit: int) -> Any:
    body = await _read_body(request, limit)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"The body is not valid JSON ({e}).", allowed="a JSON object") from e


async def _form_files(
    request: Request, limit: int, max_files: int
) -> tuple[list[tuple[str, UploadFile]], dict[str, str]]:
    """The form's file parts, and its text fields."""
    # One file more than allowed, so that check_count can say how many is too many.
    form = await _capped(request, limit).form(max_files=max_files + 1, max_fields=max_files + 16)
    files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    return files, fields


def _meta(source: Mapping[str, Any], where: str, base: RequestMeta) -> RequestMeta:
    """`base` with the metadata fields that `source` (JSON object, form, headers) gives."""
    values = {}
    for name in META_FIELDS:
        value = source.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InputError(f"{where}{name} is a {type(value).__name__}, not a string.",
                             allowed=f"{name} as a string of at most {_META_MAX} characters")
        value = str(value)
        if len(value) > _META_MAX:
            raise InputError(f"{where}{name} has {len(value)} characters.",
                             allowed=f"{name} as a string of at most {_META_MAX} characters")
        values[name] = value
    return replace(base, **values) if values else base


def _header_meta(request: Request) -> RequestMeta:
    headers = {name: request.headers.get(header) for name, header in META_HEADERS.items()}
    return _meta(headers, "header ", RequestMeta())


def _json_images(
    body: Any, cfg: ServeUserConfig, base: RequestMeta
) -> tuple[list[bytes], list[str | None], list[RequestMeta]]:
    items = body.get("images") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InputError('The JSON body has no "images" list.', allowed=_BATCH_ALLOWED)
    check_count(len(items), cfg)
    base = _meta(body, "", base)
    images: list[bytes] = []
    ids: list[str | None] = []
    metas: list[RequestMeta] = []
    for i, item in enumerate(items):
        ident = None
        meta = base
        if isinstance(item, dict):
            ident = item.get("id")
            if ident is not None and not isinstance(ident, str):
                raise InputError(f"images[{i}].id is a {type(ident).__name__}, not a string.")
            meta = _meta(item, f"images[{i}].", base)
            item = item.get("data", item.get("image"))
        data = decode_base64(item, f"images[{i}]")
        images.append(check_encoded(data, cfg, ident or f"images[{i}]"))
        ids.append(ident)
        metas.append(meta)
    return images, ids, metas


def build_api(
    service: AdcService, metrics: AppMetrics | None = None, recorder: Recorder | None = None,
    shadow: ShadowRunner | None = None,
) -> FastAPI:
    """A FastAPI app serving `service` (one app per replica); `metrics` (the replica's) counts
    requests, images, decisions and latency; `recorder` (when recording is on) is handed each
    answered request's images, answers and metadata, off the request path; `shadow` is offered
    each answered request too (its model classifies a share of the images, off the request path:
    the caller's answer is always the champion's)."""
    api = FastAPI(
        title="ADC inference",
        description="Automatic defect classification of AOI images.",
        version=oip.SERVER_VERSION,
    )
    if metrics is not None:
        _measure(api, metrics)

    async def classify_counted(request: Request, images: list[Any], ids: list[Any] | None = None,
                               metas: list[RequestMeta] | RequestMeta | None = None):
        request.state.images = len(images)
        prep = service.prepare(images, ids)
        probs = await service.probabilities(prep)
        model = prep.model
        result = (model, probs, answers(probs, model.meta, prep.ids))
        if metrics is not None:
            metrics.answers(result[2])
        if recorder is not None or shadow is not None:
            metas = metas if metas is not None else _header_meta(request)
            dataset = dataset_line(model.meta.lineage)
            if recorder is not None:
                recorder.submit(images, result[2], metas, model_version=model.model_id, classes=model.meta.classes,
                                dataset=dataset, audit_rate=service.config.audit_rate)
            if shadow is not None:
                shadow.offer(prep, images, result[2], metas, dataset=dataset)
        return result

    @api.exception_handler(AdcpError)
    async def _adcp_error(request: Request, e: AdcpError) -> JSONResponse:
        if getattr(request.state, "oip", False):
            return JSONResponse(oip.error_body(e), status_code=e.http_status)
        return JSONResponse(e.to_json(), status_code=e.http_status)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        body = {"error": "HTTPError", "detail": e.detail}
        if getattr(request.state, "oip", False):
            body = {"error": str(e.detail), "error_type": "HTTPError", "detail": e.detail}
        return JSONResponse(body, status_code=e.status_code, headers=e.headers)

    # -- v1 --------------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        model = service.require_model()
        body: dict[str, Any] = {"status": "ok", "model_version": model.model_id}
        if service.reconfigure_error:
            # Still serving (200), but not the configuration that was asked for.
            body.update(status="degraded", reconfigure_error=service.reconfigure_error)
        return JSONResponse(body)

    @api.get("/v1/model")
    async def model_info() -> JSONResponse:
        body = service.require_model().describe()
        body["config"] = service.config.fingerprint()
        if service.reconfigure_error:
            body["reconfigure_error"] = service.reconfigure_error
        if shadow is not None:
            body["shadow"] = shadow.status()
        return JSONResponse(body)

    @api.post("/v1/classify")
    async def classify(request: Request) -> JSONResponse:
        service.require_model()
        cfg = service.config
        media = _media_type(request)
        ident = None
        meta = _header_meta(request)
        if media in RAW_TYPES or media.startswith("image/"):
            data = await _read_body(request, cfg.max_image_bytes)
        elif media == "multipart/form-data":
            files, fields = await _form_files(request, body_limit(cfg, 1), 1)
            meta = _meta(fields, "form field ", meta)
            named = [f for k, f in files if k in SINGLE_FIELDS]
            if len(named) != 1:
                got = [k for k, _ in files]
                raise InputError(
                    f"The form has file fields {got}.",
                    allowed='exactly one file, in field "file" or "image"',
                    hint="Send several images to /v1/classify/batch.",
                )
            data, ident = await named[0].read(), named[0].filename or None
        elif media == "application/json":
            body = await _read_json(request, body_limit(cfg, 1, base64=True))
            if not isinstance(body, dict) or "image" not in body:
                raise InputError('The JSON body has no "image".', allowed=_SINGLE_ALLOWED)
            data, ident = decode_base64(body["image"], "image"), body.get("id")
            if ident is not None and not isinstance(ident, str):
                raise InputError(f'"id" is a {type(ident).__name__}, not a string.')
            meta = _meta(body, "", meta)
        else:
            raise UnsupportedMediaError(
                f"Content-Type {media or '(none)'!r} is not accepted.",
                allowed=_SINGLE_ALLOWED,
                hint="With curl: -H 'Content-Type: image/png' --data-binary @image.png",
            )
        _, _, answers = await classify_counted(request, [data], [ident], meta)
        return JSONResponse(answers[0])

    @api.post("/v1/classify/batch")
    async def classify_batch(request: Request) -> JSONResponse:
        service.require_model()
        cfg = service.config
        media = _media_type(request)
        n = cfg.max_images_per_request
        meta: list[RequestMeta] | RequestMeta = _header_meta(request)
        if media == "multipart/form-data":
            files, fields = await _form_files(request, body_limit(cfg, n), n)
            meta = _meta(fields, "form field ", meta)
            check_count(len(files), cfg)
            images, ids = [], []
            for i, (_, f) in enumerate(files):
                name = f.filename or f"file[{i}]"
                images.append(check_encoded(await f.read(), cfg, name))
                ids.append(f.filename or None)
        elif media == "application/json":
            body = await _read_json(request, body_limit(cfg, n, base64=True))
            images, ids, meta = _json_images(body, cfg, meta)
        else:
            raise UnsupportedMediaError(
                f"Content-Type {media or '(none)'!r} is not accepted for a batch.",
                allowed=_BATCH_ALLOWED,
            )
        model, _, answers = await classify_counted(request, images, ids, meta)
        return JSONResponse({"results": answers, "model_version": model.model_id})

    # -- Open Inference Protocol v2 -------------------------------------------------------

    def _mark_oip(request: Request) -> None:
        request.state.oip = True

    v2 = APIRouter(prefix="/v2", dependencies=[Depends(_mark_oip)])

    def _model_named(name: str, version: str | None = None):
        if name != oip.MODEL_NAME:
            raise NotFoundError(f"No model named {name!r}.", allowed=f'model "{oip.MODEL_NAME}"')
        model = service.require_model()
        if version is not None and version != model.model_id:
            raise NotFoundError(
                f"Model {name!r} has no version {version!r} loaded.",
                allowed=f"version {model.model_id!r}",
            )
        return model

    @v2.get("")
    async def server_metadata() -> JSONResponse:
        return JSONResponse(oip.server_metadata())

    @v2.get("/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @v2.get("/health/ready")
    async def ready() -> JSONResponse:
        ok = service.model is not None
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @v2.get("/models/{name}")
    @v2.get("/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> JSONResponse:
        return JSONResponse(oip.model_metadata(_model_named(name, version)))

    @v2.get("/models/{name}/ready")
    @v2.get("/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        if name != oip.MODEL_NAME:
            _model_named(name)
        ok = service.model is not None and (version is None or version == service.model.model_id)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @v2.post("/models/{name}/infer")
    @v2.post("/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> JSONResponse:
        _model_named(name, version)
        cfg = service.config
        media = _media_type(request)
        if media not in ("application/json", ""):
            raise UnsupportedMediaError(
                f"Content-Type {media!r} is not accepted.",
                allowed="application/json (the binary tensor extension is not supported)",
            )
        # Raw pixels as JSON numbers take up to ~4 bytes each ("255,").
        limit = max(body_limit(cfg, cfg.max_images_per_request, base64=True), 64 * 1024 * 1024)
        req = oip.parse_infer(await _read_json(request, limit), cfg)
        model, probs, answers = await classify_counted(request, req.images)
        return JSONResponse(oip.infer_response(req, model, probs, answers))

    api.include_router(v2)
    return api


def _measure(api: FastAPI, metrics: AppMetrics) -> None:
    """Count every request (route, status, images) and its latency, errors included."""

    @api.middleware("http")
    async def _count(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.request(request.url.path, status, time.perf_counter() - started,
                            getattr(request.state, "images", 0))
