"""Who may use a site's review station: station tokens checked with the center's public key.

A station token (configs.station_tokens, a JWT the center signed) arrives in the
`X-Adcp-Station-Token` header. It is checked here with the center's public key only, so a station
keeps working while the center is unreachable; it must name this site (or `*`), and its subject
must not be on the disabled-accounts list that the center PUTs to the station (signed too, and
cached in the site review DB so that a restarted station still refuses a disabled account).

Logging in takes either a station token (checked locally) or a center API token, which is
exchanged for a station token at the center (`POST /api/v1/review/station-token`).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from configs.errors import AdcpError, ForbiddenError, InputError, UnauthorizedError
from configs.station_tokens import (
    CENTER_SUBJECT,
    StationClaims,
    read_disabled,
    verify,
)

__all__ = [
    "CENTER_ROLES",
    "DISABLED_STATE_KEY",
    "REVIEWER_ROLES",
    "CenterUnreachableError",
    "StationAuth",
]

#: Roles that may give verdicts at a station (for the sites their token names).
REVIEWER_ROLES = ("reviewer", "engineer", "operator", "admin")
#: Besides the center itself (`sub: center`), the role that may call the center's routes.
CENTER_ROLES = ("admin",)
#: station_state key of the cached disabled-accounts list (the signed token as the center sent it).
DISABLED_STATE_KEY = "disabled_accounts"
#: How long one replica trusts its in-memory copy of the disabled list before re-reading the DB
#: (another replica may have received a newer list); a DB read per request would be wasted work.
_DISABLED_REFRESH_S = 5.0
#: Seconds to wait for the center when exchanging an API token: a login should fail quickly and
#: say that a station token still works, not hang the page.
_EXCHANGE_TIMEOUT_S = 10.0
_EXCHANGE_PATH = "/api/v1/review/station-token"
_TOKEN_MAX = 8192


class CenterUnreachableError(AdcpError):
    """The center could not be reached (or answered garbage) when exchanging an API token."""

    http_status = 503


class StationAuth:
    """Checks station tokens for one site; `db` (a ReviewDB) holds the cached disabled list."""

    def __init__(self, db: Any, *, site: str, public_key_pem: str, center_url: str | None = None,
                 timeout_s: float = _EXCHANGE_TIMEOUT_S, transport: httpx.BaseTransport | None = None) -> None:
        self.db = db
        self.site = site
        self.public_key_pem = public_key_pem
        self.center_url = (center_url or "").rstrip("/") or None
        self.timeout_s = timeout_s
        self._transport = transport  # tests: an in-process center
        self._lock = threading.Lock()
        self._disabled: set[str] = set()
        self._disabled_iat = -1
        self._read_at = float("-inf")

    # -- checking a token ------------------------------------------------------------------

    def check(self, token: str | None) -> StationClaims:
        """The claims of a valid token for this site whose holder is not disabled.

        Raises UnauthorizedError (401: missing, bad, expired, disabled) or ForbiddenError (403:
        another site's token)."""
        if token and len(token) > _TOKEN_MAX:
            raise UnauthorizedError(f"The station token is longer than {_TOKEN_MAX} characters.")
        claims = verify(self.public_key_pem, token or "")
        if claims.sub != CENTER_SUBJECT and claims.sub in self.disabled():
            raise UnauthorizedError(f"The account {claims.sub} is disabled.",
                                    hint="An admin enables it again with `adcp user enable NAME`.")
        claims.require_site(self.site)
        return claims

    def reviewer(self, token: str | None) -> StationClaims:
        """`check`, and the role may give verdicts (403 otherwise)."""
        claims = self.check(token)
        if claims.sub != CENTER_SUBJECT and claims.role not in REVIEWER_ROLES:
            raise ForbiddenError(f"{claims.sub} has role {claims.role}, which may not review.",
                                 allowed=f"roles {', '.join(REVIEWER_ROLES)}")
        return claims

    def center(self, token: str | None) -> StationClaims:
        """`check`, and the holder is the center (`sub: center`) or an admin (403 otherwise)."""
        claims = self.check(token)
        if claims.sub != CENTER_SUBJECT and claims.role not in CENTER_ROLES:
            raise ForbiddenError(f"{claims.sub} ({claims.role}) may not call the center's routes of the station.",
                                 allowed="the center's own token, or role admin")
        return claims

    # -- the disabled-accounts list --------------------------------------------------------

    def disabled(self) -> set[str]:
        """The disabled account names: the newest list the center sent to this site."""
        now = time.monotonic()
        with self._lock:
            if now - self._read_at < _DISABLED_REFRESH_S:
                return self._disabled
        stored = self.db.get_state(DISABLED_STATE_KEY)
        with self._lock:
            if stored:
                try:
                    names, iat = read_disabled(self.public_key_pem, stored)
                except UnauthorizedError:
                    names, iat = [], -1  # a list signed by another key (the center's key changed)
                if iat >= self._disabled_iat:
                    self._disabled, self._disabled_iat = set(names), iat
            self._read_at = now
            return self._disabled

    def set_disabled(self, token: str) -> int:
        """Store the center's signed list (from `PUT /api/disabled`); returns how many accounts it
        disables. A list older than the one held is ignored, so a replayed old list cannot enable
        an account again."""
        names, iat = read_disabled(self.public_key_pem, token)
        stored = self.db.get_state(DISABLED_STATE_KEY)
        if stored:
            try:
                held, held_iat = read_disabled(self.public_key_pem, stored)
            except UnauthorizedError:
                held_iat = -1
            if held_iat > iat:
                return len(held)
        self.db.set_state(DISABLED_STATE_KEY, token)
        with self._lock:
            self._disabled, self._disabled_iat, self._read_at = set(names), iat, time.monotonic()
        return len(names)

    # -- logging in ------------------------------------------------------------------------

    def login(self, *, token: str | None = None, api_token: str | None = None) -> dict[str, Any]:
        """`{"token", "user", "role", "sites", "expires_at"}` for a station token (checked here) or
        a center API token (exchanged at the center, then checked here as well)."""
        if bool(token) == bool(api_token):
            raise InputError("Give either a station token or a center API token.",
                             allowed='{"token": "<station token>"} or {"api_token": "<center API token>"}')
        if api_token:
            token = self.exchange(api_token)
        claims = self.reviewer(token)
        return {"token": token, "user": claims.sub, "role": claims.role, "sites": claims.sites,
                "expires_at": datetime.fromtimestamp(claims.exp, UTC).isoformat()}

    def exchange(self, api_token: str) -> str:
        """A station token for this site from the center, for the holder of `api_token`."""
        if not self.center_url:
            raise CenterUnreachableError(
                "This station does not know the center's address, so it cannot check a center API token.",
                hint="Log in with a station token: `adcp review token --site " + self.site + "` prints one.")
        url = self.center_url + _EXCHANGE_PATH
        try:
            with httpx.Client(timeout=self.timeout_s, transport=self._transport) as client:
                r = client.post(url, json={"site": self.site}, headers={"Authorization": f"Bearer {api_token}"})
        except httpx.HTTPError as e:
            raise CenterUnreachableError(
                f"The center at {self.center_url} could not be reached to check the API token ({type(e).__name__}).",
                hint="A station token still works while the center is away: `adcp review token --site "
                     + self.site + "` prints one.") from e
        body = _json(r)
        if r.status_code in (401, 403):
            error = UnauthorizedError if r.status_code == 401 else ForbiddenError
            raise error(f"The center refused the API token: {body.get('detail') or r.reason_phrase}.",
                        allowed=body.get("allowed"), hint=body.get("hint"))
        if r.status_code >= 400 or not isinstance(body.get("token"), str):
            raise CenterUnreachableError(
                f"The center answered {r.status_code} when asked for a station token: "
                f"{body.get('detail') or r.text[:200]}",
                hint="A station token still works: `adcp review token --site " + self.site + "` prints one.")
        return body["token"]


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}

