"""The coordinator: the central process, its API, dashboard and CLI; the subpackages hold the parts."""

__all__: list[str] = []
