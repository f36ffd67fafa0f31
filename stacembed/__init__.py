"""stacembed: STAC items in, embeddings out, as STAC items with GeoParquet and COG assets.

The writing half is a straight line, one module per stage::

    resolve -> readers -> chips -> embed -> writers -> catalog -> publish

``stacembed.run(config)`` runs it (``pipeline`` owns the outline, ``job`` is the work on one
series, ``executors`` do it here or on a dask cluster, ``layout`` owns the output tree);
``stacembed.search(config)`` only finds the items; ``stacembed.open_embeddings(href)`` reads
the catalogs a run writes. The CLI (``stacembed run``) only builds the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import RunConfig
from .errors import StacembedError

if TYPE_CHECKING:
    import pystac

    from .embeddings import open_embeddings
    from .pipeline import RunSummary, plan, run

__all__ = ["RunConfig", "RunSummary", "StacembedError", "__version__", "open_embeddings", "plan", "run", "search"]

# Imported on first use: the pipeline imports torch (seconds), and `stacembed search` and
# `--help` should not wait for it.
_LAZY = {"RunSummary": "pipeline", "plan": "pipeline", "run": "pipeline", "open_embeddings": "embeddings"}


def search(config: RunConfig) -> list[pystac.Item]:
    """The items ``config`` selects (its source, filters and presets), signed when needed."""
    from .resolve import Search

    return Search.from_config(config).items_found()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'stacembed' has no attribute {name!r}")
