"""The center's registry client: push an image archive into a site's container registry (or
pull one back) with `skopeo`, the one external tool images need.

It runs processes and talks to registries, so it lives in the coordinator, not in the data layer
that builds and stores the archives (`data.oci_build`, `data.oci_archive`, `data.images`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from configs.errors import InputError, SiteError
from data.oci_archive import DIGEST_RE, REPO_RE, TAG_RE, inspect_archive

__all__ = ["RegistryError", "pull_from_registry", "push_to_registry"]

_REGISTRY_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$")


class RegistryError(SiteError):
    """A registry could not be reached, refused a push or pull, or `skopeo` failed."""

    http_status = 502



def _skopeo() -> str:
    found = shutil.which("skopeo")
    if not found:
        raise RegistryError(
            "skopeo is not installed; it is needed to push images to a registry.",
            hint="Install it (`apt-get install skopeo` on Debian/Ubuntu, or `make install-test`).",
        )
    return found


def _check_target(registry: str, repo: str, tag: str) -> str:
    if not _REGISTRY_RE.match(registry):
        raise InputError(
            f'Got "{registry}" for the registry.',
            allowed="HOST or HOST:PORT, without a scheme or path (e.g. 127.0.0.1:5000, harbor.fab-a)",
        )
    if not REPO_RE.match(repo):
        raise InputError(
            f'Got "{repo}" for the repository.',
            allowed="lowercase path components of letters, digits, '.', '_', '-', separated by '/'",
            hint='Use a name like "adcp/operator".',
        )
    if not TAG_RE.match(tag):
        raise InputError(
            f'Got "{tag}" for the tag.',
            allowed="up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-'",
        )
    return f"docker://{registry}/{repo}:{tag}"


def _skopeo_message(stderr: str) -> str:
    """skopeo's own one-line error, out of its logrus output (`level=fatal msg="..."`)."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        m = re.search(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"', line)
        if m:
            try:
                text = json.loads(f'"{m.group(1)}"')
            except ValueError:
                text = m.group(1)
            break
    else:
        text = lines[-1] if lines else "no message"
    return text if len(text) <= 600 else text[:600] + "..."


def _authfile(tmp: Path, registry: str, creds: str | None) -> Path | None:
    """An auth file (mode 600) for `creds` ("user:password"), so the password is not in argv."""
    if creds is None:
        return None
    if ":" not in creds:
        raise InputError("Registry credentials must be given as USER:PASSWORD.", hint="Check --creds.")
    path = tmp / "auth.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": {registry: {"auth": base64.b64encode(creds.encode()).decode()}}}, f)
    return path


def _run_skopeo(args: list[str], what: str, timeout_s: float, hint: str) -> None:
    try:
        proc = subprocess.run(
            [_skopeo(), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise RegistryError(
            f"{what} did not finish within {timeout_s:g} s.",
            hint="Check that the registry is reachable and not overloaded, or raise the timeout.",
        ) from e
    if proc.returncode != 0:
        raise RegistryError(
            f"{what} failed: {_skopeo_message(proc.stderr)}", hint=hint
        )


def _tls(flag: str, tls_verify: bool) -> str:
    return f"--{flag}-tls-verify={'true' if tls_verify else 'false'}"


def _archive_path(path: Path) -> str:
    text = str(path.resolve())
    if ":" in text:  # skopeo reads "oci-archive:PATH:REF"; a colon in PATH would split it
        raise InputError(f"{text} contains ':', which skopeo cannot take in an archive path.",
                         hint="Move the archive to a path without ':'.")
    return text


def push_to_registry(
    archive: Path | str,
    registry: str,
    repo: str,
    tag: str,
    *,
    tls_verify: bool = False,
    creds: str | None = None,
    timeout_s: float = 300,
) -> str:
    """Copy an image archive into `registry/repo:tag` with `skopeo copy`; returns the manifest
    digest the registry stores it under.

    Raises InputError for a bad archive or name, RegistryError (one line of skopeo's message)
    when the registry cannot be reached or refuses the image, or skopeo is missing.
    """
    archive = Path(archive)
    info = inspect_archive(archive)
    dest = _check_target(registry, repo, tag)
    with tempfile.TemporaryDirectory(prefix="adcp-skopeo-") as tmp:
        digestfile = Path(tmp) / "digest"
        args = ["copy", "--quiet", _tls("dest", tls_verify), "--digestfile", str(digestfile)]
        auth = _authfile(Path(tmp), registry, creds)
        if auth is not None:
            args += ["--dest-authfile", str(auth)]
        args += [f"{info.format}:{_archive_path(archive)}", dest]
        _run_skopeo(
            args,
            f"Pushing {archive.name} to {registry}/{repo}:{tag}",
            timeout_s,
            "Check the registry address, that the registry is running and reachable from here, "
            "and the credentials (creds=USER:PASSWORD); use tls_verify=False for a plain-HTTP registry.",
        )
        digest = digestfile.read_text().strip()
    if not DIGEST_RE.match(digest):
        raise RegistryError(f"skopeo reported {digest!r} as the pushed digest, not a sha256 digest.")
    return digest


def pull_from_registry(
    registry: str,
    repo: str,
    tag: str,
    out: Path | str,
    *,
    tls_verify: bool = False,
    creds: str | None = None,
    timeout_s: float = 300,
) -> Path:
    """Copy `registry/repo:tag` into an OCI archive at `out` (replaced if present); returns `out`.

    Raises RegistryError when the registry cannot be reached or has no such image.
    """
    src = _check_target(registry, repo, tag)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    part.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="adcp-skopeo-") as tmp:
        args = ["copy", "--quiet", _tls("src", tls_verify)]
        auth = _authfile(Path(tmp), registry, creds)
        if auth is not None:
            args += ["--src-authfile", str(auth)]
        # The reference inside the archive is "repo:tag" (skopeo splits PATH:REF at the first ':').
        args += [src, f"oci-archive:{_archive_path(part)}:{repo}:{tag}"]
        try:
            _run_skopeo(
                args,
                f"Pulling {registry}/{repo}:{tag}",
                timeout_s,
                "Check the registry address, that it is reachable, and that it holds that "
                "repository and tag.",
            )
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    part.replace(out)
    return out
