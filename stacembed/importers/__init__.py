"""Embeddings other tools made, as stacembed embedding catalogs: ``stacembed import NAME``.

An importer describes an existing embedding product as STAC items that ``open_embeddings``
reads like a run's own (``emb:type``, ``emb:dimensions``, ``data_type``, ``emb:quantization``,
projection fields), so that quicklooks, similarity search, clustering, change maps, the map
page and the heads work on it unchanged. Files are referenced where they are, or a lon/lat box
of them is copied into the output tree, values untouched.

- ``aef``: AlphaEarth Foundations' annual Satellite Embedding COGs.
"""
