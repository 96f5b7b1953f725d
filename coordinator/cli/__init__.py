"""The `adcp` command line, a client of the coordinator's HTTP API."""

__all__: list[str] = []
