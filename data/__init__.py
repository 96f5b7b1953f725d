"""The data layer: dataset schema and synthetic AOI images, dataset read/write and import, the
content-addressed artifact store and the transfer engine that copies between stores, container
image archives, and the exported-model format. It imports only `configs`.

Import the modules themselves (`data.artifacts`, `data.transfer`, ...); the package exports nothing.
"""

__all__: list[str] = []
