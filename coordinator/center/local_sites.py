"""The platform's local sites (the embedded default): the coordinator process starts each one's
Ray head when it starts (`ray start --head` in a session of its own, so the sites outlive a
coordinator restart and a restarted coordinator finds them running), and reports how far each is.
A local site's folder (`<home>/sites/<name>/`) also holds its review DB (SQLite, `review.db`)
unless the site's `review.db_url` says otherwise.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from configs.errors import AdcpError
from configs.platform import SiteConfig
from raycluster import start_site
from raycluster.local import read_state, site_dir

__all__ = ["LocalSites", "review_db_url"]

log = logging.getLogger("adcp.local_sites")


def review_db_url(home: Path, site: SiteConfig) -> str | None:
    """The SQLAlchemy URL of `site`'s review DB: `review.db_url` when set, else for a local site
    `sqlite:///<home>/sites/<name>/review.db` (its folder made here), else None (a site that is
    not local and names no DB records nothing)."""
    if site.review.db_url:
        return site.review.db_url
    if not site.local:
        return None
    folder = site_dir(Path(home), site.name)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'review.db').resolve()}"


class LocalSites:
    """Start and report the local sites of a platform."""

    def __init__(self, home: Path, sites: list[SiteConfig]) -> None:
        self.home = Path(home)
        self._sites = [s for s in sites if s.local]
        self._lock = threading.Lock()
        self._state: dict[str, dict[str, Any]] = {s.name: {"state": "starting", "error": None} for s in self._sites}

    def start_all(self) -> None:
        """Start every local site not already running, concurrently, in the background."""
        for site in self._sites:
            threading.Thread(target=self._start, args=(site,), daemon=True, name=f"site-{site.name}").start()

    def _start(self, site: SiteConfig) -> None:
        try:
            existing = read_state(site.name, self.home)
            local = existing if existing is not None and existing.is_running() else start_site(
                site.local_config(), self.home)
            update = {"state": "running", "dashboard": local.dashboard_url, "serve": local.serve_url}
        except AdcpError as e:
            update = {"state": "failed", "error": str(e)}
        except Exception as e:  # our bug, but the API must still say what happened
            log.exception("starting local site %s", site.name)
            update = {"state": "failed", "error": f"{type(e).__name__}: {e}"}
        with self._lock:
            self._state[site.name].update(update)

    def status(self) -> dict[str, Any]:
        """`{"ready": all started or failed, "sites": {name: {state, dashboard, serve, error}}}`."""
        with self._lock:
            sites = {k: dict(v) for k, v in self._state.items()}
        return {"ready": all(s["state"] != "starting" for s in sites.values()), "sites": sites}
