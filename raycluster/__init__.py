"""Site runtimes: local Ray clusters for the embedded default (`raycluster.local`)."""

from raycluster.local import (
    LocalSite,
    list_sites,
    load_site,
    running_site,
    site_processes,
    start_site,
    status,
    stop_site,
)

__all__ = [
    "LocalSite",
    "list_sites",
    "load_site",
    "running_site",
    "site_processes",
    "start_site",
    "status",
    "stop_site",
]
