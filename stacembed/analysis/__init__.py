"""The reading half's analyses: what can be made of the embedding catalogs ``stacembed run`` writes.

Every module here reads through ``stacembed.embeddings.open_embeddings`` (``EmbeddingItem``'s
``iter_chips`` / ``array``, bounded batches, float32 whatever the storage type), so it works
the same on GeoParquet and COG outputs, chip or dense, int8 or float32, local or over http(s),
and never holds a catalog in memory. ``quicklook`` draws each item's embeddings as a PCA -> RGB picture;
other modules add searches and comparisons over the same reader.
"""
