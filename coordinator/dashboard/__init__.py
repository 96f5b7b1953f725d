"""The web dashboard: its routes, login links and static files."""

__all__: list[str] = []
