"""Site monitoring: metric collection, parsing, history and alerts."""

__all__: list[str] = []
