"""What runs inside a site's Ray cluster to make a model: the ADC network, the Ray Data pipeline,
Ray Train training (`python -m train_jobs.train`), Ray Tune search (`python -m train_jobs.tune`),
calibration and export. It imports only `configs` and `data`.

Jobs name its modules by import path; the package exports nothing.
"""

__all__: list[str] = []
