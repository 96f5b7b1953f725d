"""Cross-site training runs, their planning, model rollouts and Serve deployment."""

__all__: list[str] = []
