"""Tokens the center signs and every review station verifies with the center's public key.

A reviewer logs in at a site's review station with a short-lived token (a JWT, EdDSA/Ed25519)
that the center issued: who, which role, which sites, until when. The station needs only the
center's public key (given to the review app when it is deployed) to check it, so the station keeps
working while the center is unreachable. Accounts disabled at the center reach each station as a
signed list (`disabled_token`), which the station caches.

The center also signs its own short tokens (`sub: center`, role admin, every site) for the calls
it makes to stations through the site gateway (verdict sync, statistics, annotation loads).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

from configs.errors import ForbiddenError, UnauthorizedError

__all__ = [
    "ALGORITHM",
    "ALL_SITES",
    "CENTER_SUBJECT",
    "ISSUER",
    "STATION_TOKEN_HEADER",
    "StationClaims",
    "disabled_token",
    "load_or_create_key",
    "public_pem",
    "read_disabled",
    "sign",
    "verify",
]

ALGORITHM = "EdDSA"
ISSUER = "adcp-center"
ALL_SITES = "*"
CENTER_SUBJECT = "center"
#: The header a station token travels in. Not `Authorization`: the Karmada proxy and Ray's own
#: token auth use that one on the way to a site.
STATION_TOKEN_HEADER = "X-Adcp-Station-Token"
_AUDIENCE = "adcp-review-station"
_DISABLED_AUDIENCE = "adcp-disabled-accounts"
_LEEWAY_S = 30  # clock skew between center and site


class StationClaims(BaseModel):
    """What a station token says about its holder."""

    model_config = ConfigDict(extra="forbid")

    sub: str = Field(description="user name (or `center` for the center's own calls)")
    role: str
    sites: list[str] = Field(description="site names the holder may review at; `*` for every site")
    exp: int
    iat: int
    jti: str

    def may_use(self, site: str) -> bool:
        return ALL_SITES in self.sites or site in self.sites

    def require_site(self, site: str) -> None:
        if not self.may_use(site):
            raise ForbiddenError(
                f"{self.sub} ({self.role}) may not review at site {site}.",
                allowed=", ".join(self.sites) or "no site",
                hint="An admin grants sites with `adcp user add NAME --role reviewer --sites SITE,...`.",
            )


def load_or_create_key(path: str | Path) -> Ed25519PrivateKey:
    """The center's signing key at `path` (PEM, PKCS#8), created (mode 0600) when missing."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise UnauthorizedError(f"{path} is not an Ed25519 private key.")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, path)
    return key


def public_pem(key: Ed25519PrivateKey) -> str:
    """The public half of `key` as PEM text (what a station is given)."""
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def sign(key: Ed25519PrivateKey, *, sub: str, role: str, sites: list[str] | tuple[str, ...],
         ttl_s: int, now: float | None = None) -> tuple[str, StationClaims]:
    """A station token for `sub`, valid for `ttl_s` seconds; returns (token, its claims)."""
    now = int(now if now is not None else time.time())
    claims = StationClaims(sub=sub, role=role, sites=list(sites), iat=now, exp=now + int(ttl_s),
                           jti=uuid.uuid4().hex)
    payload = {**claims.model_dump(), "iss": ISSUER, "aud": _AUDIENCE}
    return jwt.encode(payload, key, algorithm=ALGORITHM), claims


def verify(public_key_pem: str, token: str, *, now: float | None = None) -> StationClaims:
    """The claims of `token` when the center's key signed it and it has not expired; raises
    UnauthorizedError (401) saying why otherwise."""
    if not token:
        raise UnauthorizedError("No station token given.",
                                hint=f"Log in at the station, or send the token in {STATION_TOKEN_HEADER}.")
    try:
        options = {"require": ["exp", "iat", "sub", "jti"]}
        payload = jwt.decode(token, public_key_pem, algorithms=[ALGORITHM], audience=_AUDIENCE, issuer=ISSUER,
                             leeway=_LEEWAY_S, options=options)
        if now is not None and payload["exp"] + _LEEWAY_S < now:
            raise jwt.ExpiredSignatureError("Signature has expired")
    except jwt.ExpiredSignatureError as e:
        raise UnauthorizedError("The station token has expired.", hint="Log in again.") from e
    except jwt.PyJWTError as e:
        raise UnauthorizedError(f"The station token is not valid ({e}).",
                                hint="Log in again with credentials the center issued.") from e
    payload.pop("iss", None)
    payload.pop("aud", None)
    return StationClaims.model_validate(payload)


def disabled_token(key: Ed25519PrivateKey, names: list[str], *, now: float | None = None) -> str:
    """The list of disabled accounts, signed, as the center sends it to every station."""
    now = int(now if now is not None else time.time())
    payload: dict[str, Any] = {"iss": ISSUER, "aud": _DISABLED_AUDIENCE, "iat": now,
                               "disabled": sorted(set(names))}
    return jwt.encode(payload, key, algorithm=ALGORITHM)


def read_disabled(public_key_pem: str, token: str) -> tuple[list[str], int]:
    """(disabled account names, when the center signed the list) from `disabled_token`'s output;
    UnauthorizedError when the center did not sign it."""
    try:
        payload = jwt.decode(token, public_key_pem, algorithms=[ALGORITHM], audience=_DISABLED_AUDIENCE,
                             issuer=ISSUER, options={"require": ["iat"]})
    except jwt.PyJWTError as e:
        raise UnauthorizedError(f"The disabled-accounts list is not signed by the center ({e}).") from e
    return list(payload.get("disabled") or []), int(payload["iat"])
