"""Production path: Karmada policies, site registration and discovery, the kubernetes client, and
the aggregated-proxy site gateway. Imports `configs` and `raycluster` only.

The center reaches this package through `raycluster.gateway`'s registry and lazy imports, so a
platform of direct sites never loads it. Import its modules (`karmada.render`, `karmada.kube`, ...)
directly; the package itself exports nothing."""

__all__: list[str] = []
