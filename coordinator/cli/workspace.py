"""Where the embedded platform keeps things: the home folder and the central store.

    $ADCP_HOME (default ~/.adcp)
      store/                   the central artifact store (data.artifacts layout: objects/ + artifacts/)
      store/work/models/...    what a training run writes before it is published as a model artifact
      store/checkpoints/<run>/ Ray Train checkpoints
      sites/<name>/            local Ray site state (raycluster.local) and the site's own store
      coordinator/             the coordinator's API token, pid file and log
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from configs.errors import InputError, NotFoundError
from configs.platform import default_home
from data.artifacts import ArtifactRef, ArtifactStore

_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,62})(@(?P<version>[A-Za-z0-9._-]{1,64}))?$")
_HINTS = {"dataset": "List what exists with `adcp data list`.", "model": "Train one with `adcp train`."}


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

    @property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.store)

    def names(self, kind: str) -> list[str]:
        """Names of complete artifacts of `kind` ("dataset", "model")."""
        return sorted({m.name for m in self.artifacts.list(kind)})

    def versions(self, kind: str, name: str) -> list[str]:
        return self.artifacts.versions(kind, name)

    def next_version(self, kind: str, name: str) -> str:
        return self.artifacts.next_version(kind, name)

    def resolve(self, kind: str, ref: str) -> tuple[str, str, str]:
        """(name, version, manifest URL) of `ref`; without a version, the latest complete one."""
        name, version = parse_ref(ref, kind)
        versions = self.versions(kind, name)
        if version is None:
            if not versions:
                raise NotFoundError(f"No {kind} named {name} in {self.store}.", hint=_HINTS.get(kind))
            version = versions[-1]
        elif version not in versions:
            raise NotFoundError(
                f"{kind.capitalize()} {name}@{version} does not exist in {self.store}.",
                allowed=", ".join(f"{name}@{v}" for v in versions) or "none yet",
            )
        return name, version, self.artifacts.manifest_url(ArtifactRef(kind, name, version))
