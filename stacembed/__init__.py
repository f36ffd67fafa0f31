"""stacembed: STAC items in, embeddings out, as STAC items with GeoParquet and COG assets.

The pipeline is a straight line, one module per stage::

    resolve -> stack -> chips -> embed -> writers -> publish (-> transactions)

``stacembed.run(config)`` runs it; ``stacembed.search(config)`` only finds the items; the CLI
(``stacembed run``) only builds the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .errors import StacembedError  # noqa: E402

if TYPE_CHECKING:
    import pystac

    from .pipeline import RunSummary, plan, run

__all__ = ["RunConfig", "RunSummary", "StacembedError", "__version__", "plan", "run", "search"]


def search(config: RunConfig) -> list["pystac.Item"]:
    """The items ``config`` selects (its source, filters and presets), signed when needed."""
    from .resolve import Search

    return Search.from_config(config).items_found()


def __getattr__(name: str) -> Any:
    # The pipeline imports torch (seconds); `stacembed search` and `--help` should not wait for it.
    if name in ("RunSummary", "plan", "run"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'stacembed' has no attribute {name!r}")
