"""Production path: Karmada policies, site registration and discovery, the kubernetes client, and
the aggregated-proxy site gateway. Imports `configs` and `raycluster` only."""
