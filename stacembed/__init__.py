"""stacembed: STAC items in, embeddings out, as STAC items with GeoParquet and COG assets.

The pipeline is a straight line, one module per stage::

    resolve -> stack -> chips -> embed -> writers -> publish

``stacembed.run(config)`` runs it; the CLI (``stacembed run``) only builds the config.
"""

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .errors import StacembedError  # noqa: E402
from .pipeline import RunSummary, plan, run  # noqa: E402

__all__ = ["RunConfig", "RunSummary", "StacembedError", "__version__", "plan", "run"]
