"""Where the embedded platform keeps things: the home folder, the local store and its layout.

    $ADCP_HOME (default ~/.adcp)
      store/datasets/<name>/<version>/   datasets (data.dataset layout)
      store/models/<name>/<version>/     exported models (model.pt2 + metadata.json)
      store/code/adcp-<sha12>.zip        code bundles (Ray working_dir zips)
      store/checkpoints/<run>/           Ray Train checkpoints
      sites/<name>/                      local Ray site state (raycluster.local)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import fsspec

from configs.errors import InputError, NotFoundError

_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,62})(@(?P<version>[A-Za-z0-9._-]{1,64}))?$")


def default_home() -> Path:
    return Path(os.environ.get("ADCP_HOME") or Path.home() / ".adcp").expanduser()


def parse_ref(ref: str, what: str = "dataset") -> tuple[str, str | None]:
    """'NAME' or 'NAME@VERSION' -> (name, version or None)."""
    m = _REF.match(ref)
    if not m:
        raise InputError(
            f'Got "{ref}" for a {what} reference.',
            allowed="NAME or NAME@VERSION; lower-case letters, digits, '.', '_' and '-'",
        )
    return m["name"], m["version"]


@dataclass(frozen=True)
class Workspace:
    """The home folder and the local store URL (a `file://` URL of `<home>/store` by default)."""

    home: Path
    store: str

    @classmethod
    def at(cls, home: Path | None = None, store: str | None = None) -> "Workspace":
        home = Path(home or default_home()).resolve()
        return cls(home, (store or (home / "store").as_uri()).rstrip("/"))

    def url(self, *parts: str) -> str:
        return "/".join([self.store, *parts])

    def names(self, kind: str) -> list[str]:
        """Names stored under `kind` ("datasets", "models"), complete or not."""
        fs, base = fsspec.core.url_to_fs(self.url(kind))
        if not fs.exists(base):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False))

    def versions(self, kind: str, name: str) -> list[str]:
        """Complete versions of `kind/name` (those whose manifest or metadata was written)."""
        fs, base = fsspec.core.url_to_fs(self.url(kind, name))
        if not fs.exists(base):
            return []
        marker = "manifest.json" if kind == "datasets" else "metadata.json"
        found = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)]
        done = [v for v in found if fs.exists(f"{base}/{v}/{marker}")]
        return sorted(done, key=lambda v: (len(v), v))

    def next_version(self, kind: str, name: str) -> str:
        numeric = [int(v) for v in self.versions(kind, name) if v.isdigit()]
        return str(max(numeric, default=0) + 1)

    def resolve(self, kind: str, ref: str) -> tuple[str, str, str]:
        """(name, version, url) of `ref`; without a version, the latest complete one."""
        name, version = parse_ref(ref, kind.rstrip("s"))
        versions = self.versions(kind, name)
        if version is None:
            if not versions:
                raise NotFoundError(
                    f"No {kind.rstrip('s')} named {name} in {self.store}.",
                    hint="List what exists with `adcp data list`"
                    if kind == "datasets"
                    else "Train one with `adcp train`.",
                )
            version = versions[-1]
        elif version not in versions:
            raise NotFoundError(
                f"{kind.rstrip('s').capitalize()} {name}@{version} does not exist in {self.store}.",
                allowed=", ".join(f"{name}@{v}" for v in versions) or "none yet",
            )
        return name, version, self.url(kind, name, version)
