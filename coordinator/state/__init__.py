"""The coordinator's SQLite state."""

__all__: list[str] = []
