"""The center's station-token key: it signs the tokens reviewers log in with at a site's review
station, the center's own short tokens for its calls to stations, and the disabled-accounts list.

The private key lives at `<home>/coordinator/station_key.pem` (mode 0600, made on first use); a
station is given only `public_pem()` (in its Serve env, `ADCP_CENTER_PUBLIC_KEY`), so it checks
tokens while the center is unreachable. `Center.station_keys` holds one `StationKeys`.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from configs.station_tokens import (
    ALL_SITES,
    CENTER_SUBJECT,
    disabled_token,
    load_or_create_key,
    public_pem,
    sign,
)

__all__ = ["CENTER_TTL_S", "REVIEWER_TTL_S", "StationKeys"]

#: A reviewer's station token lasts one 12-hour shift: long enough for a shift without the center,
#: short enough that a lost tablet stops working by the next one.
REVIEWER_TTL_S = 12 * 3600
#: The center's own tokens (verdict sync, annotation loads, disabled lists) are minted per use.
CENTER_TTL_S = 300
#: A cached center token is renewed when less than this is left (a slow sync must not see it expire).
_RENEW_S = 60


class StationKeys:
    """The signing key of the center under `home`, loaded (or created) on first use; thread-safe."""

    def __init__(self, home: str | Path) -> None:
        self.path = Path(home) / "coordinator" / "station_key.pem"
        self._lock = threading.Lock()
        self._key: Any = None
        self._center: tuple[str, float] | None = None  # (token, expires at)

    @property
    def key(self) -> Any:
        with self._lock:
            if self._key is None:
                self._key = load_or_create_key(self.path)
            return self._key

    def public_pem(self) -> str:
        """The public key (PEM) every station verifies tokens with."""
        return public_pem(self.key)

    def issue(self, user: Any, ttl_s: int = REVIEWER_TTL_S) -> dict[str, Any]:
        """A station token for `user` (anything with `name`, `role`, `sites`: a `Principal` or a
        `User`): its sites, or every site (`*`) for a user not limited to sites.
        Returns {"token", "expires_at" (ISO, UTC), "user", "role", "sites"}."""
        sites = list(getattr(user, "sites", ()) or ()) or [ALL_SITES]
        if user.role == "admin":
            sites = [ALL_SITES]
        token, claims = sign(self.key, sub=user.name, role=user.role, sites=sites, ttl_s=ttl_s)
        return {"token": token, "expires_at": _iso(claims.exp), "user": claims.sub, "role": claims.role,
                "sites": claims.sites}

    def center_token(self) -> str:
        """The center's own token (sub `center`, role admin, every site), reused until a minute
        before it expires."""
        now = time.time()
        with self._lock:
            if self._center is not None and self._center[1] - now > _RENEW_S:
                return self._center[0]
        token, claims = sign(self.key, sub=CENTER_SUBJECT, role="admin", sites=[ALL_SITES], ttl_s=CENTER_TTL_S)
        with self._lock:
            self._center = (token, float(claims.exp))
        return token

    def disabled_list(self, names: list[str]) -> str:
        """The signed list of disabled accounts, as `PUT /review/api/disabled` takes it."""
        return disabled_token(self.key, list(names))


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="seconds")
