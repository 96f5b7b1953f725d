"""The review station's FastAPI app (serve_apps.review_api) in-process over a SQLite ReviewDB.

Requests go through Starlette's TestClient with `root_path="/review"` and the full path, which is
what Ray Serve's proxy hands an app deployed at route prefix /review. Tokens are signed here with a
fresh center key; the center itself (for API-token logins) is an httpx MockTransport.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image
from starlette.testclient import TestClient

from configs.errors import ConfigError
from configs.station_tokens import STATION_TOKEN_HEADER, disabled_token, public_pem, sign
from serve_apps.review import station_settings
from serve_apps.review_api import browser_image, build_review_api, station_classes
from serve_apps.review_db import QueuedItem, ReviewDB
from serve_apps.station_auth import DISABLED_STATE_KEY, StationAuth

SITE = "fab-a"
CLASSES = ["particle", "scratch", "mura", "line_defect", "pinhole", "false_defect"]
NAMES = {"site": "北京一厂", "products": {"p1": "55寸面板"}, "classes": {"particle": "颗粒", "scratch": "划伤"}}
T0 = datetime.now(UTC) - timedelta(minutes=5)


def png(i: int, *, size: int = 32) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def encoded(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, format=fmt)
    return buf.getvalue()


class Station:
    """One station app over a fresh DB and store, and the center key that signs its tokens."""

    def __init__(self, tmp: Path, *, site: str = SITE, transport: httpx.BaseTransport | None = None) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.pem = public_pem(self.key)
        self.store = tmp / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.db = ReviewDB(f"sqlite:///{tmp / 'review.db'}")
        auth = StationAuth(self.db, site=site, public_key_pem=self.pem, center_url="http://center.test",
                           transport=transport)
        self.app = build_review_api(self.db, site=site, public_key_pem=self.pem, center_url="http://center.test",
                                    display_names=NAMES, lease_s=60, store_options={}, auth=auth)
        self.queued = 0
        self.client = TestClient(self.app, root_path="/review", base_url="http://station.test")

    def token(self, sub: str = "li.wei", role: str = "reviewer", sites: tuple[str, ...] = (SITE,),
              ttl_s: int = 3600, now: float | None = None) -> str:
        return sign(self.key, sub=sub, role=role, sites=list(sites), ttl_s=ttl_s, now=now)[0]

    def center(self) -> dict[str, str]:
        return {STATION_TOKEN_HEADER: self.token("center", "admin", ("*",))}

    def as_(self, sub: str = "li.wei", role: str = "reviewer", **kw) -> dict[str, str]:
        return {STATION_TOKEN_HEADER: self.token(sub, role, **kw)}

    def put_image(self, data: bytes) -> tuple[str, str]:
        sha = hashlib.sha256(data).hexdigest()
        path = self.store / "review" / "objects" / "sha256" / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return sha, path.as_uri()

    def queue(self, n: int, *, product: str = "p1", why: str = "low_confidence") -> list[str]:
        items = []
        for _ in range(n):
            self.queued += 1
            sha, uri = self.put_image(png(self.queued))
            items.append(QueuedItem(
                id=f"{self.queued:032x}", image_sha256=sha, image_uri=uri, site=SITE, product=product,
                aoi_machine="aoi-7", panel_id=f"P{self.queued}", model_version="adc@3", dataset="aoi",
                predicted="scratch", confidence=0.51,
                top3=[{"class": "scratch", "confidence": 0.51}, {"class": "mura", "confidence": 0.3},
                      {"class": "particle", "confidence": 0.1}],
                decision="review", why=why, created_at=T0 + timedelta(seconds=self.queued), classes=CLASSES))
        self.db.record(items)
        return [it.id for it in items]

    def post(self, path: str, body: dict | None = None, headers: dict | None = None) -> httpx.Response:
        return self.client.post(f"/review{path}", json=body if body is not None else {}, headers=headers or {})

    def get(self, path: str, headers: dict | None = None, **params) -> httpx.Response:
        return self.client.get(f"/review{path}", headers=headers or {}, params=params)


@pytest.fixture
def station(tmp_path):
    s = Station(tmp_path)
    try:
        yield s
    finally:
        s.client.close()
        s.db.close()


# --- logging in -----------------------------------------------------------------------------

def test_login_with_a_station_token_and_me(station):
    token = station.token()
    r = station.post("/api/login", {"token": token})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token"] == token and body["user"] == "li.wei" and body["role"] == "reviewer"
    assert body["sites"] == [SITE] and datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC)
    me = station.get("/api/me", {STATION_TOKEN_HEADER: token}).json()
    assert me["site"] == SITE and me["display_name"] == "北京一厂" and me["products"] == {"p1": "55寸面板"}
    keys = {c["name"]: (c["key"], c["display_name"]) for c in me["classes"]}
    assert keys["particle"] == ("1", "颗粒") and keys["scratch"] == ("2", "划伤")
    assert keys["false_defect"] == ("F", "假缺陷") and keys["pinhole"][0] == "5"
    assert station.get("/healthz").json() == {"status": "ok", "site": SITE, "display_name": "北京一厂"}


@pytest.mark.parametrize("case", ["missing", "garbage", "expired", "other_key"])
def test_bad_tokens_get_401(station, case):
    if case == "missing":
        headers = {}
    elif case == "garbage":
        headers = {STATION_TOKEN_HEADER: "not.a.jwt"}
    elif case == "expired":
        headers = station.as_(ttl_s=60, now=datetime.now(UTC).timestamp() - 7200)
    else:
        other = Ed25519PrivateKey.generate()
        headers = {STATION_TOKEN_HEADER: sign(other, sub="li.wei", role="reviewer", sites=[SITE], ttl_s=600)[0]}
    r = station.get("/api/me", headers)
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    login = station.post("/api/login", {"token": headers.get(STATION_TOKEN_HEADER, "x")})
    assert login.status_code == 401
    if case == "expired":
        assert "expired" in r.json()["detail"]


def test_disabled_accounts_are_refused_and_an_old_list_cannot_enable_them(station):
    user = station.as_("wang.fang")
    assert station.get("/api/me", user).status_code == 200
    old = disabled_token(station.key, [], now=datetime.now(UTC).timestamp() - 60)
    new = disabled_token(station.key, ["wang.fang", "zhao.lei"])
    r = station.client.put("/review/api/disabled", json={"token": new}, headers=station.center())
    assert r.status_code == 200 and r.json() == {"disabled": 2}
    refused = station.get("/api/me", user)
    assert refused.status_code == 401 and "disabled" in refused.json()["detail"]
    assert station.post("/api/login", {"token": user[STATION_TOKEN_HEADER]}).status_code == 401
    # a replayed older list is ignored; the cached list lives in the DB (a restarted station keeps it)
    assert station.client.put("/review/api/disabled", json={"token": old}, headers=station.center()).json() == {
        "disabled": 2}
    assert station.db.get_state(DISABLED_STATE_KEY) == new
    fresh = StationAuth(station.db, site=SITE, public_key_pem=station.pem)
    assert fresh.disabled() == {"wang.fang", "zhao.lei"}
    # a list the center did not sign is refused
    forged = disabled_token(Ed25519PrivateKey.generate(), [])
    assert station.client.put("/review/api/disabled", json={"token": forged},
                              headers=station.center()).status_code == 401
    assert station.get("/api/me", station.as_("li.wei")).status_code == 200


def test_another_sites_reviewer_gets_403_naming_the_allowed_sites(station):
    token = station.token(sites=("fab-b", "fab-c"))
    r = station.post("/api/login", {"token": token})
    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "Forbidden" and body["allowed"] == "fab-b, fab-c" and "fab-a" in body["detail"]
    assert station.post("/api/claim", {"n": 5}, {STATION_TOKEN_HEADER: token}).status_code == 403
    assert station.get("/api/me", station.as_(role="viewer")).status_code == 403
    assert station.get("/api/me", station.as_(role="engineer", sites=("*",))).status_code == 200


def test_login_with_an_api_token_is_exchanged_at_the_center(tmp_path):
    seen: list[httpx.Request] = []
    holder: dict[str, Station] = {}

    def center(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers["authorization"] != "Bearer good":
            return httpx.Response(401, json={"error": "Unauthorized", "detail": "unknown token"})
        token = holder["s"].token("chen.jing", "reviewer")
        return httpx.Response(200, json={"token": token, "user": "chen.jing", "role": "reviewer", "sites": [SITE]})

    s = Station(tmp_path, transport=httpx.MockTransport(center))
    holder["s"] = s
    r = s.post("/api/login", {"api_token": "good"})
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "chen.jing" and s.get("/api/me", {STATION_TOKEN_HEADER: r.json()["token"]}).is_success
    assert str(seen[0].url) == "http://center.test/api/v1/review/station-token"
    assert json.loads(seen[0].content) == {"site": SITE}
    refused = s.post("/api/login", {"api_token": "bad"})
    assert refused.status_code == 401 and "unknown token" in refused.json()["detail"]
    assert s.post("/api/login", {"api_token": "good", "token": "x"}).status_code == 400
    assert s.post("/api/login", {}).status_code == 400


def test_center_unreachable_gives_503_saying_a_station_token_works(tmp_path):
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    s = Station(tmp_path, transport=httpx.MockTransport(down))
    r = s.post("/api/login", {"api_token": "good"})
    assert r.status_code == 503
    assert r.json()["error"] == "CenterUnreachableError" and "station token" in r.json()["hint"]
    assert s.post("/api/login", {"token": s.token()}).status_code == 200  # the station still works


# --- the queue ------------------------------------------------------------------------------

def test_claim_verdict_undo_second_opinion_release(station):
    ids = station.queue(8)
    li, wang = station.as_("li.wei"), station.as_("wang.fang", role="operator")
    a = station.post("/api/claim", {"n": 3}, li).json()
    assert [it["id"] for it in a["items"]] == ids[:3]
    assert datetime.fromisoformat(a["lease_until"]) > datetime.now(UTC)
    first = a["items"][0]
    assert first["image_url"] == f"api/images/{first['image_sha256']}" and first["state"] == "claimed"
    b = station.post("/api/claim", {"n": 10}, wang).json()
    assert [it["id"] for it in b["items"]] == ids[3:]  # never an item li.wei holds

    # somebody else's item: 409; a label the model does not know: 400; extra fields: 422
    assert station.post("/api/verdict", {"item_id": ids[0], "label": "scratch"}, wang).status_code == 409
    assert station.post("/api/verdict", {"item_id": ids[0], "label": "dust"}, li).status_code == 400
    extra = station.post("/api/verdict", {"item_id": ids[0], "label": "scratch", "why": "x"}, li)
    assert extra.status_code == 422 and extra.json()["error"] == "InputError"

    v = station.post("/api/verdict", {"item_id": ids[0], "label": "scratch"}, li).json()
    assert v["kind"] == "verdict" and v["label"] == "scratch" and v["reviewer"] == "li.wei" and v["role"] == "reviewer"
    v2 = station.post("/api/verdict", {"item_id": ids[1], "label": "false_defect"}, li).json()
    undo = station.post("/api/undo", None, li).json()
    assert undo["kind"] == "undo" and undo["verdict_id"] == v2["event_id"] and undo["item_id"] == ids[1]
    again = station.post("/api/verdict", {"item_id": ids[1], "label": "mura"}, li)
    assert again.status_code == 200  # the undone item is li.wei's again

    second = station.post("/api/second-opinion", {"item_id": ids[0]}, li).json()
    assert second["id"] == ids[0] and second["second_opinion"] is True and second["state"] == "queued"
    assert ids[0] not in [it["id"] for it in station.post("/api/claim", {"n": 10}, li).json()["items"]]
    renewed = station.post("/api/claim", {"n": 0}, wang).json()  # what the page sends to keep its leases
    assert renewed["items"] == [] and renewed["lease_until"] > a["lease_until"]
    assert station.post("/api/claim", {"n": 201}, wang).status_code == 422
    assert station.post("/api/release", None, wang).json() == {"released": 5}
    queue = station.get("/api/queue", li).json()
    assert queue["display_name"] == "北京一厂" and queue["by_product"][0]["display_name"] == "55寸面板"
    assert queue["total"] == 7 and queue["by_product"][0]["oldest_age_s"] > 0

    events = station.get("/api/verdicts", station.center(), after=0).json()
    assert [e["kind"] for e in events["events"]] == ["verdict", "verdict", "undo", "verdict"]
    assert events["last_seq"] == events["events"][-1]["seq"]
    assert station.get("/api/verdicts", station.center(), after=events["last_seq"]).json()["events"] == []


def test_undo_with_nothing_to_undo_is_404(station):
    r = station.post("/api/undo", None, station.as_())
    assert r.status_code == 404 and r.json()["error"] == "NotFoundError"


def test_center_routes_refuse_reviewers_and_serve_the_center_and_admins(station, tmp_path):
    station.queue(2)
    reviewer = station.as_("li.wei", role="engineer")
    for method, path in (("GET", "/api/items"), ("GET", "/api/verdicts"), ("GET", "/api/stats"),
                         ("PUT", "/api/disabled"), ("POST", "/api/annotations")):
        body = {"token": "x"} if path == "/api/disabled" else {"artifact": "a@1", "url": "file:///x"}
        r = station.client.request(method, f"/review{path}", headers=reviewer,
                                   json=body if method != "GET" else None)
        assert r.status_code == 403, (path, r.text)
        assert "center" in r.json()["allowed"]
    items = station.get("/api/items", station.center(), state="queued").json()["items"]
    assert len(items) == 2
    assert station.get("/api/items", station.center(), state="weird").status_code == 422
    admin = station.as_("root", role="admin", sites=("*",))
    stats = station.get("/api/stats", admin).json()
    assert stats["site"] == SITE and stats["rows"][0]["backlog"] == 2

    table = pa.table({"image_id": ["a" * 64, "b" * 64], "label": ["scratch", "mura"], "product": ["p1", "p1"],
                      "annotator": ["li.wei", "li.wei"]})
    path = tmp_path / "annotations.parquet"
    pq.write_table(table, path)
    loaded = station.post("/api/annotations", {"artifact": "reviewed-aoi@1", "url": path.as_uri()}, station.center())
    assert loaded.status_code == 200 and loaded.json() == {"rows": 2}
    rows = station.get("/api/annotations", station.as_(), label="mura").json()["rows"]
    assert [r["image_id"] for r in rows] == ["b" * 64]
    missing = station.post("/api/annotations", {"artifact": "x@1", "url": (tmp_path / "no.parquet").as_uri()},
                           station.center())
    assert missing.status_code == 404


# --- images ---------------------------------------------------------------------------------

def test_images_are_served_with_their_type_and_converted_for_the_browser(station):
    station.queue(1)
    item = station.db.items()[0]
    r = station.get(f"/api/images/{item['image_sha256']}", station.as_())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == Path(item["image_uri"].removeprefix("file://")).read_bytes()

    deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7) % 4096  # 12-bit sensor, 16-bit file
    for data, fmt in ((encoded(deep, "TIFF"), "image/tiff"),
                      (encoded(np.full((16, 24, 3), 90, np.uint8), "BMP"), "image/bmp")):
        sha, uri = station.put_image(data)
        station.db.record([QueuedItem(id=sha[:32], image_sha256=sha, image_uri=uri, site=SITE, product="p1",
                                      aoi_machine="", panel_id="", model_version="adc@3", dataset="", predicted="mura",
                                      confidence=0.4, top3=[], decision="review", why="low_confidence",
                                      created_at=T0, classes=CLASSES)])
        shown = station.get(f"/api/images/{sha}", station.as_())
        assert shown.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(shown.content)) as img:
            assert img.mode in ("L", "RGB") and img.format == "PNG"
            if fmt == "image/tiff":
                assert np.asarray(img).max() == 255  # stretched to the image's own maximum
        original = station.get(f"/api/images/{sha}", station.as_(), original="true")
        assert original.headers["content-type"] == fmt and original.content == data
        assert "attachment" in original.headers["content-disposition"]

    assert station.get(f"/api/images/{'0' * 64}", station.as_()).status_code == 404
    assert station.get("/api/images/nothex", station.as_()).status_code == 400
    assert station.get(f"/api/images/{item['image_sha256']}").status_code == 401


def test_browser_image_keeps_8_bit_png_and_jpeg_as_they_are():
    data = png(3)
    assert browser_image(data) == (data, "image/png")
    jpeg = encoded(np.full((8, 8), 100, np.uint8), "JPEG")
    assert browser_image(jpeg) == (jpeg, "image/jpeg")
    sixteen = encoded(np.full((8, 8), 1000, np.uint16), "PNG")
    out, media = browser_image(sixteen)
    assert media == "image/png" and out != sixteen


# --- the page and its documentation ---------------------------------------------------------

def test_page_and_static_files_under_the_route_prefix(station):
    page = station.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="static/station.js"' in page.text and 'href="static/station.css"' in page.text
    assert '<html lang="zh-CN">' in page.text
    for name, kind in (("station.js", "text/javascript"), ("station.css", "text/css"), ("i18n.js", "text/javascript")):
        r = station.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    assert station.get("/static/../review_api.py").status_code == 404
    bare = station.client.get("/review", follow_redirects=False)
    assert bare.status_code == 307 and bare.headers["location"] == "review/"  # relative: right behind any proxy


def test_openapi_page_documents_claim_verdict_undo(station):
    docs = station.get("/docs")
    assert docs.status_code == 200 and "/review/openapi.json" in docs.text
    schema = station.get("/openapi.json").json()
    paths = schema["paths"]
    for path, model in (("/api/claim", "ClaimIn"), ("/api/verdict", "VerdictIn"), ("/api/undo", "EmptyIn"),
                        ("/api/second-opinion", "ItemIn"), ("/api/login", "LoginIn")):
        body = json.dumps(paths[path]["post"]["requestBody"])
        assert f"#/components/schemas/{model}" in body, path
        assert schema["components"]["schemas"][model]["additionalProperties"] is False
    verdict = schema["components"]["schemas"]["VerdictIn"]
    assert set(verdict["required"]) == {"item_id", "label"}
    assert "unsure" in verdict["properties"]["label"]["description"]
    assert STATION_TOKEN_HEADER in json.dumps(schema["components"]["securitySchemes"])
    assert {"url": "/review"} in schema.get("servers", [])


# --- settings -------------------------------------------------------------------------------

def test_station_settings_from_the_environment():
    env = {"ADCP_SITE": "fab-a", "ADCP_REVIEW_DB_URL": "sqlite:///x.db", "ADCP_CENTER_PUBLIC_KEY": "PEM",
           "ADCP_DISPLAY_NAMES": json.dumps(NAMES), "ADCP_REVIEW_LEASE_S": "120",
           "ADCP_SITE_STORE_OPTIONS": '{"anon": true}'}
    s = station_settings(env)
    assert s == {"db_url": "sqlite:///x.db", "site": "fab-a", "public_key_pem": "PEM", "center_url": None,
                 "display_names": NAMES, "lease_s": 120.0, "store_options": {"anon": True}}
    with pytest.raises(ConfigError, match="ADCP_REVIEW_DB_URL, ADCP_CENTER_PUBLIC_KEY"):
        station_settings({"ADCP_SITE": "fab-a"})
    with pytest.raises(ConfigError, match="ADCP_DISPLAY_NAMES"):
        station_settings({**env, "ADCP_DISPLAY_NAMES": "[1]"})
    with pytest.raises(ConfigError, match="ADCP_REVIEW_LEASE_S"):
        station_settings({**env, "ADCP_REVIEW_LEASE_S": "soon"})


def test_station_classes_put_named_classes_first_and_false_defect_last():
    got = station_classes({"classes": {"bubble": "气泡", "false_defect": "误报"}})
    assert got[0] == {"name": "bubble", "display_name": "气泡", "key": "1"}
    assert got[-1] == {"name": "false_defect", "display_name": "误报", "key": "F"}
    assert [c["name"] for c in got[1:-1]] == ["particle", "scratch", "mura", "line_defect", "pinhole"]


def test_the_serve_app_builds_from_its_environment(tmp_path, monkeypatch):
    from ray import serve

    from serve_apps.review import ReviewDeployment

    key = Ed25519PrivateKey.generate()
    monkeypatch.setenv("ADCP_SITE", "fab-a")
    monkeypatch.setenv("ADCP_REVIEW_DB_URL", f"sqlite:///{tmp_path / 'review.db'}")
    monkeypatch.setenv("ADCP_CENTER_PUBLIC_KEY", public_pem(key))
    monkeypatch.setenv("ADCP_REVIEW_LEASE_S", "90")
    serve.run(ReviewDeployment.bind(), _local_testing_mode=True)  # the replica reads the env, opens the DB
    assert (tmp_path / "review.db").is_file()
    assert ReviewDeployment.ray_actor_options["num_cpus"] == 0  # never a training worker's CPU
