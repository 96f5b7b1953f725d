"""The Ray Serve applications a site runs: the ADC inference app (`serve_apps.adc:app`, named by
import path in Serve configs, never imported by the coordinator) and its HTTP API. Imports `configs`
and `data` only; the package itself exports nothing."""

__all__: list[str] = []
