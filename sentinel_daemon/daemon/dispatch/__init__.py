"""Where trials run: local worker processes, or a Dask cluster (``dispatch.backend``)."""
