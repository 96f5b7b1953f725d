"""The center: sites, gateways, artifact stores, pushes and code bundles."""

__all__: list[str] = []
