"""Learn from precomputed embeddings: labels brought onto the embedding grid, light heads
trained on the vectors with spatially honest validation, and maps predicted with them.

The flow, one module a step: ``labels`` (label sources -> one label per chip, or a label map on
a grid) -> ``split`` (spatial blocks, items, folds) -> ``heads`` (knn, linear, mlp, a light
segmentation decoder; torch, seeded) -> ``metrics`` (scores and a confusion matrix) ->
``train`` / ``predict`` (read the catalogs, write a head card and STAC items).
"""

# What ``stacembed train`` offers; light, so the command line lists them without importing torch.
TASKS = ("classification", "regression", "segmentation")
SPLITS = ("blocks", "items")
