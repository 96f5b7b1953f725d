"""The one error hierarchy users see: what was wrong, what is allowed, how to fix it.

It lives in the base layer (`configs`) so that every package, including the train job and the
Serve app that run inside a site's Ray cluster, raises the same types. The CLI prints
`str(error)` as one line (traceback only with `--debug`); HTTP handlers turn `error.to_json()`
into a 4xx body with `error.http_status`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AdcpError", "ConfigError", "InputError", "PayloadTooLargeError", "UnsupportedMediaError",
           "NotFoundError", "IntegrityError", "ConflictError", "UnauthorizedError", "ForbiddenError", "SiteError",
           "JobError", "ModelUnavailableError", "KubeError", "KubeTimeoutError"]


class AdcpError(Exception):
    """Base of every error meant for a user of the platform.

    `what` says what was wrong, `allowed` what would have been accepted, `hint` how to fix it.
    """

    http_status = 500

    def __init__(
        self, what: str, *, allowed: str | None = None, hint: str | None = None, **details: Any
    ) -> None:
        self.what = what
        self.allowed = allowed
        self.hint = hint
        self.details = details
        super().__init__(what)

    def __str__(self) -> str:
        parts = [self.what]
        if self.allowed:
            parts.append(f"Allowed: {self.allowed}.")
        if self.hint:
            parts.append(self.hint)
        return " ".join(p.rstrip() for p in parts)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": type(self).__name__, "detail": self.what}
        if self.allowed:
            body["allowed"] = self.allowed
        if self.hint:
            body["hint"] = self.hint
        body.update({k: v for k, v in self.details.items() if v is not None})
        return body


class ConfigError(AdcpError):
    """A configuration file or option is invalid."""

    http_status = 422


class InputError(AdcpError):
    """A request or argument is malformed (bad image, wrong dimensions, unknown option value)."""

    http_status = 400


class PayloadTooLargeError(InputError):
    http_status = 413


class UnsupportedMediaError(InputError):
    http_status = 415


class NotFoundError(AdcpError):
    """Something the user named does not exist (dataset, model, site)."""

    http_status = 404


class IntegrityError(AdcpError):
    """Stored data does not match its recorded hash or manifest."""

    http_status = 409


class ConflictError(AdcpError):
    """The request collides with work already running (a rollout to a site that has one going);
    the details say what is busy, so the caller can wait for it and retry."""

    http_status = 409


class UnauthorizedError(AdcpError):
    """No bearer token (coordinator API), a malformed one, one nobody holds, or a disabled user's."""

    http_status = 401

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "error": "Unauthorized"}


class ForbiddenError(AdcpError):
    """The principal's role may not use this route (or this site)."""

    http_status = 403

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "error": "Forbidden"}


class SiteError(AdcpError):
    """A site's runtime could not be started, reached or stopped."""

    http_status = 503


class JobError(AdcpError):
    """A Ray job failed or could not be submitted."""

    http_status = 502


class ModelUnavailableError(AdcpError):
    """The Serve app has no model loaded (yet)."""

    http_status = 503


class KubeError(SiteError):
    """The Kubernetes (Karmada) apiserver could not be reached, refused the credentials, or failed a
    request; `status` is the HTTP status when the apiserver answered."""

    http_status = 502


class KubeTimeoutError(KubeError):
    """A wait on the apiserver (a Cluster becoming Ready, a rebalance finishing) passed its deadline."""

    http_status = 504
