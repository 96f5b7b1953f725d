"""The HTTP face of a site's review station: a FastAPI app over the site review DB.

The Serve app (`serve_apps.review`) builds it on each replica; tests build it around a SQLite
ReviewDB and call it in-process. Ray Serve routes `/review/...` here with `root_path` set to
`/review` and the full path kept, so the routes below are relative to the app and the OpenAPI
page (`/review/docs`) finds its schema under the prefix. The page (`serve_apps/station/`) uses
relative links only, so it also works behind the site gateway's longer prefixes (Karmada proxy).

Routes (see the README's review station section): the page (`/`, `/static/...`), `/healthz`,
reviewer routes under `/api` (login, me, claim, images, verdict, undo, second-opinion, release,
queue, annotations) and the center's routes (items, verdicts, stats, shadow, annotations load, disabled).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Literal

import fsspec
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyHeader
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from configs.errors import AdcpError, InputError, NotFoundError
from configs.platform import DEFAULT_CLASS_NAMES
from configs.station_tokens import STATION_TOKEN_HEADER, StationClaims
from data.schema import DEFECT_CLASSES
from serve_apps.station_auth import StationAuth

__all__ = [
    "STATION_DIR",
    "browser_image",
    "build_review_api",
    "station_classes",
]

STATION_DIR = Path(__file__).with_name("station")
_STATIC = {"station.js": "text/javascript", "station.css": "text/css", "i18n.js": "text/javascript"}
_NO_CACHE = {"Cache-Control": "no-cache"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FALSE = "false_defect"
_UNSURE = "unsure"
_LABEL = r"^[A-Za-z0-9_.\-]{1,64}$"
#: Images are content-addressed: the bytes behind one sha256 never change.
_IMAGE_CACHE = "private, max-age=86400, immutable"
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png", "png"), (b"\xff\xd8\xff", "image/jpeg", "jpg"),
          (b"BM", "image/bmp", "bmp"), (b"II*\x00", "image/tiff", "tif"), (b"MM\x00*", "image/tiff", "tif"))
_BROWSER_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_Body):
    """Exactly one of the two: a station token, or a center API token to exchange at the center."""

    token: str | None = Field(None, description="a station token (`adcp review token --site S` prints one)")
    api_token: str | None = Field(None, description="a center API token, exchanged at the center for a station token")


class ClaimIn(_Body):
    n: int = Field(20, ge=0, le=200, description="how many new items to lease (0: only renew the lease on those held)")
    product: str | None = Field(None, description="only items of this product (all products when null)")
    include_held: bool = Field(False, description="also return the items you still hold (a page that reloaded)")


class VerdictIn(_Body):
    item_id: str = Field(..., min_length=1, max_length=64, description="the claimed item's id")
    label: str = Field(..., pattern=_LABEL,
                       description=f'a class name, "{_FALSE}", or "{_UNSURE}" (escalates: back to the queue)')


class ItemIn(_Body):
    item_id: str = Field(..., min_length=1, max_length=64, description="an item you gave a verdict")


class EmptyIn(_Body):
    """No fields."""


class AnnotationsIn(_Body):
    artifact: str = Field(..., min_length=3, max_length=256, description="the annotations artifact, NAME@V")
    url: str = Field(..., min_length=1, max_length=2048,
                     description="fsspec URL of the artifact's annotations.parquet in the site store")


class DisabledIn(_Body):
    token: str = Field(..., min_length=1, max_length=1_000_000,
                       description="the center's signed list (configs.station_tokens.disabled_token)")


def station_classes(display_names: dict[str, Any]) -> list[dict[str, str]]:
    """The classes a reviewer picks from, each with its display name and key (1..9, then none):
    the platform's named classes first, then the built-in ones, `false_defect` last (key F)."""
    names = {**DEFAULT_CLASS_NAMES, **(display_names.get("classes") or {})}
    order = [c for c in (display_names.get("classes") or {}) if c != _FALSE]
    order += [c for c in DEFECT_CLASSES if c != _FALSE and c not in order]
    out = [{"name": c, "display_name": names.get(c, c), "key": str(i + 1) if i < 9 else ""}
           for i, c in enumerate(order)]
    return out + [{"name": _FALSE, "display_name": names.get(_FALSE, _FALSE), "key": "F"}]


def _sniff(data: bytes) -> tuple[str, str]:
    for magic, media, ext in _MAGIC:
        if data.startswith(magic):
            return media, ext
    return "application/octet-stream", "bin"


def browser_image(data: bytes) -> tuple[bytes, str]:
    """(bytes, content type) a browser shows: 8-bit PNG and JPEG as stored; BMP, TIFF and 16-bit
    or float images converted to an 8-bit PNG (16-bit stretched to the image's own maximum, so a
    12-bit sensor's image is not nearly black). InputError when the bytes are not an image."""
    media, _ = _sniff(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if media in ("image/png", "image/jpeg") and img.mode in _BROWSER_MODES:
                return data, media
            img.load()
            if img.mode in _BROWSER_MODES:
                out = img.convert("RGBA" if "A" in img.mode else ("L" if img.mode in ("1", "L") else "RGB"))
            else:  # I;16, I;16B, I, F, CMYK, ...
                arr = np.asarray(img)
                if arr.ndim == 2 or arr.dtype.kind in "iuf":
                    arr = arr.astype(np.float64)
                    top = float(arr.max()) if arr.size else 0.0
                    arr = np.clip(arr * (255.0 / top) if top > 0 else arr * 0, 0, 255).astype(np.uint8)
                    out = Image.fromarray(arr)
                else:
                    out = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"The stored image ({len(data)} bytes) is not readable ({e}).") from e
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), "image/png"


def build_review_api(db: Any, *, site: str, public_key_pem: str, center_url: str | None = None,
                     display_names: dict[str, Any] | None = None, lease_s: float = 300,
                     store_options: dict[str, Any] | None = None,
                     auth: StationAuth | None = None) -> FastAPI:
    """The station's FastAPI app for `site` over `db` (a serve_apps.review_db.ReviewDB).

    `display_names` is ADCP_DISPLAY_NAMES (`{"site", "products", "classes"}`), `lease_s` how long
    a claim holds its items, `store_options` the fsspec options of the site store the items'
    `image_uri`s point into. `auth` replaces the token checker (tests: a fake center)."""
    names = dict(display_names or {})
    products: dict[str, str] = dict(names.get("products") or {})
    classes = station_classes(names)
    options = dict(store_options or {})
    auth = auth or StationAuth(db, site=site, public_key_pem=public_key_pem, center_url=center_url)
    api = FastAPI(
        title=f"ADC review station ({site})",
        description=("The review station of one site: line staff claim images the model was unsure of (and an "
                     "audit sample), give verdicts, undo, ask for a second opinion. Send the station token in "
                     f"the `{STATION_TOKEN_HEADER}` header (`POST /api/login` returns one)."),
        version="1",
    )
    api.state.auth = auth
    api.state.db = db
    header = APIKeyHeader(name=STATION_TOKEN_HEADER, auto_error=False,
                          description="a station token the center signed")

    def reviewer(token: str | None = Depends(header)) -> StationClaims:
        return auth.reviewer(token)

    def center(token: str | None = Depends(header)) -> StationClaims:
        return auth.center(token)

    @api.exception_handler(AdcpError)
    async def _adcp_error(request: Request, e: AdcpError) -> JSONResponse:
        return JSONResponse(e.to_json(), status_code=e.http_status)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = [{"where": ".".join(str(p) for p in x["loc"]), "problem": x["msg"]} for x in e.errors()]
        return JSONResponse({"error": "InputError", "detail": "The request is not valid.", "problems": problems},
                            status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": "HTTPError", "detail": e.detail}, status_code=e.status_code, headers=e.headers)

    @api.middleware("http")
    async def _bare_prefix(request: Request, call_next):
        # `/review` without its slash: redirect relatively (`review/`), so that the page's relative
        # links resolve and the redirect stays right behind proxies that add their own prefix.
        root = request.scope.get("root_path", "")
        if root and request.scope["path"] == root:
            return RedirectResponse(root.rsplit("/", 1)[-1] + "/", status_code=307)
        return await call_next(request)

    # -- the page --------------------------------------------------------------------------

    @api.get("/", include_in_schema=False)
    def page() -> Response:
        return FileResponse(STATION_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_NO_CACHE)

    @api.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _STATIC:
            raise NotFoundError(f"No station file {name}.", allowed=", ".join(sorted(_STATIC)))
        return FileResponse(STATION_DIR / name, media_type=_STATIC[name] + "; charset=utf-8", headers=_NO_CACHE)

    @api.get("/healthz", tags=["station"])
    def healthz() -> dict[str, str]:
        """Liveness: `{"status": "ok", "site", "display_name"}` (the login page shows the name)."""
        return {"status": "ok", "site": site, "display_name": names.get("site") or site}

    # -- reviewers -------------------------------------------------------------------------

    @api.post("/api/login", tags=["station"])
    def login(body: LoginIn) -> dict[str, Any]:
        """Check a station token here, or exchange a center API token for one at the center; returns
        `{"token", "user", "role", "sites", "expires_at"}`. A station token works while the center is
        unreachable."""
        return auth.login(token=body.token, api_token=body.api_token)

    @api.get("/api/me", tags=["station"])
    def me(who: StationClaims = Depends(reviewer)) -> dict[str, Any]:
        """Who is logged in, this site and its display name, the classes with their keys, product names."""
        return {"user": who.sub, "role": who.role, "sites": who.sites, "site": site,
                "display_name": names.get("site") or site, "classes": classes, "products": products,
                "lease_s": lease_s}

    @api.post("/api/claim", tags=["station"])
    def claim(body: ClaimIn | None = None, who: StationClaims = Depends(reviewer)) -> dict[str, Any]:
        """Lease up to `n` queued items (never an item another reviewer holds) for `lease_s` seconds.
        Each item carries `image_url`, relative to the station's root (`api/images/<sha256>`)."""
        body = body or ClaimIn()
        lease_id, until, items = db.claim(who.sub, body.n, lease_s=lease_s, product=body.product,
                                           include_held=body.include_held)
        return {"lease_id": lease_id, "lease_until": _iso(until),
                "items": [{**it, "image_url": f"api/images/{it['image_sha256']}"} for it in items]}

    @api.get("/api/images/{sha256}", tags=["station"],
             responses={200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "the image"}})
    def image(sha256: str, original: bool = Query(False, description="the file as stored (BMP, TIFF, 16-bit)"),
              who: StationClaims = Depends(reviewer)) -> Response:
        """The image with that sha256: PNG/JPEG as stored, other formats as an 8-bit PNG for the browser;
        `original=true` gives the stored file for download."""
        if not _SHA256.match(sha256):
            raise InputError(f"{sha256!r} is not a sha256.", allowed="64 lowercase hex digits")
        row = db.image(sha256)
        if not row:
            raise NotFoundError(f"No queued image {sha256} at site {site}.")
        data = _read(row["image_uri"], options)
        if original:
            media, ext = _sniff(data)
            return Response(data, media_type=media, headers={
                "Cache-Control": _IMAGE_CACHE, "Content-Disposition": f'attachment; filename="{sha256}.{ext}"'})
        shown, media = browser_image(data)
        return Response(shown, media_type=media, headers={"Cache-Control": _IMAGE_CACHE})

    @api.post("/api/verdict", tags=["station"])
    def verdict(body: VerdictIn, who: StationClaims = Depends(reviewer)) -> dict[str, Any]:
        """Give the verdict on a claimed item: a class name, `false_defect`, or `unsure` (the item goes
        back to the queue, escalated). 409 when your lease on it has ended. Returns the verdict event."""
        return db.verdict(body.item_id, who.sub, who.role, body.label)

    @api.post("/api/undo", tags=["station"])
    def undo(body: EmptyIn | None = None, who: StationClaims = Depends(reviewer)) -> dict[str, Any]:
        """Undo your last verdict: the item is yours again (leased). 404 when there is nothing to undo.
        Returns the undo event (`verdict_id`: the verdict undone)."""
        return db.undo(who.sub)

    @api.post("/api/second-opinion", tags=["station"])
    def second_opinion(body: ItemIn, who: StationClaims = Depends(reviewer)) -> dict[str, Any]:
        """Send an item you judged back to the queue for another reviewer. Returns the item."""
        return db.second_opinion(body.item_id, who.sub)

    @api.post("/api/release", tags=["station"])
    def release(body: EmptyIn | None = None, who: StationClaims = Depends(reviewer)) -> dict[str, int]:
        """Give back every item you hold (on logout); returns `{"released": n}`."""
        return {"released": db.release(who.sub)}

    @api.get("/api/queue", tags=["station"])
    def queue(who: StationClaims = Depends(reviewer)) -> dict[str, Any]:
        """Queue size and oldest age by product, with the products' display names."""
        stats = db.queue_stats()
        rows = [{**r, "display_name": products.get(r["product"]) or r["product"]} for r in stats["by_product"]]
        return {**stats, "by_product": rows, "site": site, "display_name": names.get("site") or site}

    @api.get("/api/annotations", tags=["station"])
    def annotations(image_id: str | None = None, label: str | None = None, product: str | None = None,
                    limit: int = Query(1000, ge=1, le=10_000),
                    who: StationClaims = Depends(reviewer)) -> dict[str, Any]:
        """Annotations loaded at this site, by image, class and product."""
        return {"rows": db.query_annotations(image_id=image_id, label=label, product=product, limit=limit)}

    # -- the center ------------------------------------------------------------------------

    @api.get("/api/items", tags=["center"])
    def items(state: Literal["queued", "claimed", "done"] | None = None, limit: int = Query(100, ge=1, le=10_000),
              who: StationClaims = Depends(center)) -> dict[str, Any]:
        """The queue's items (all states unless `state`), oldest first."""
        return {"items": db.items(state=state, limit=limit)}

    @api.get("/api/verdicts", tags=["center"])
    def verdicts(after: int = Query(0, ge=0, description="the last seq already read"),
                 limit: int = Query(1000, ge=1, le=10_000), who: StationClaims = Depends(center)) -> dict[str, Any]:
        """Verdict and undo events with `seq > after`, oldest first, and the last seq given."""
        events, last = db.events_after(after, limit)
        return {"events": events, "last_seq": last}

    @api.get("/api/stats", tags=["center"])
    def stats(who: StationClaims = Depends(center)) -> dict[str, Any]:
        """Production quality counts per (product, model version) at this site."""
        return {"site": site, "rows": db.stats()}

    @api.get("/api/shadow", tags=["center"])
    def shadow(model_version: str = Query(..., min_length=1, description="the challenger (shadow) model version"),
               who: StationClaims = Depends(center)) -> dict[str, Any]:
        """How a shadow model did beside the champion here: agreement, and both models' escapes and
        overkill against the verdicts on the shadowed images (ReviewDB.shadow_stats)."""
        return {"site": site, **db.shadow_stats(model_version)}

    @api.post("/api/annotations", tags=["center"])
    def load_annotations(body: AnnotationsIn, who: StationClaims = Depends(center)) -> dict[str, int]:
        """Load an annotations artifact pushed to this site's store into the site DB."""
        import pyarrow.parquet as pq

        try:
            with fsspec.open(body.url, "rb", **options) as f:
                table = pq.read_table(f)
        except FileNotFoundError as e:
            raise NotFoundError(f"No annotations file at {body.url}.",
                                hint="Push the artifact to this site first (`adcp push`).") from e
        return {"rows": db.load_annotations(body.artifact, table)}

    @api.put("/api/disabled", tags=["center"])
    def disabled(body: DisabledIn, who: StationClaims = Depends(center)) -> dict[str, int]:
        """Replace the disabled-accounts list (signed by the center); returns `{"disabled": n}`."""
        return {"disabled": auth.set_disabled(body.token)}

    return api


def _iso(t: Any) -> Any:
    return t.isoformat() if hasattr(t, "isoformat") else t


def _read(uri: str, options: dict[str, Any]) -> bytes:
    try:
        with fsspec.open(uri, "rb", **options) as f:
            return f.read()
    except FileNotFoundError as e:
        raise NotFoundError(f"The image file {uri} is missing from the site store.") from e
