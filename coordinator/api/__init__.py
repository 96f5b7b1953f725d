"""The coordinator's HTTP API (FastAPI app and its route modules)."""

__all__: list[str] = []
