"""Exceptions raised by stacembed.

Every error a user can cause (bad flags, unreadable inputs, missing bands, ...) is a
:class:`StacembedError`. The CLI prints these as a single line and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StacembedError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class ConfigError(StacembedError, ValueError):
    """A configuration value (flag or YAML key) is malformed or inconsistent."""


class ResolveError(StacembedError):
    """Items could not be found: unreadable catalog, unknown collection, nothing matched."""


class BandError(StacembedError):
    """An item lacks a band the model needs, or its band metadata is unusable."""


class ReadError(StacembedError):
    """An asset could not be opened or read (bad href, corrupt GeoTIFF, no georeferencing)."""


class ModelError(StacembedError):
    """A model card is unreadable or invalid, or its weights cannot be resolved or loaded."""


class OutputError(StacembedError):
    """The output directory cannot be written, or holds a run made with other parameters."""


class PublishError(StacembedError):
    """A STAC API refused or could not take the published collection or items."""


class LabelError(StacembedError):
    """Labels cannot be used: unreadable, without a CRS, a column missing, no chip covered, one class only."""
