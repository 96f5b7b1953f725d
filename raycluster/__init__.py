"""Site runtimes: local Ray clusters for the embedded default (`raycluster.local`), and the site
gateway through which the center reaches any site (`raycluster.gateway`)."""

from raycluster._machine import free_ports, read_proc, terminate
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
    "free_ports",
    "read_proc",
    "terminate",
    "LocalSite",
    "list_sites",
    "load_site",
    "running_site",
    "site_processes",
    "start_site",
    "status",
    "stop_site",
]
