"""Resolve STAC items: a STAC API search, a static catalog, an item file, or sample cubes -> pystac Items.

``Search`` is the whole question (where, what, how to reach it), built once from the run
configuration, presets applied; ``Search.items()`` answers it the same way whatever the
source: what a source cannot filter is filtered on the client (see ``filters``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import pystac

from ..access import Access, redact_text
from ..errors import ConfigError, ResolveError
from .cubes import cube_items, is_cube_source
from .files import only_collections, read_item_file
from .filters import ItemFilter, apply, item_time_range
from .presets import Preset, ValueRule, find_preset, load_presets
from .static import catalog_items, sample_catalog_href

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = [
    "ItemFilter", "Preset", "Search", "item_time_range", "load_presets", "read_item_file", "resolve_items",
    "sample_catalog_href",
]


@dataclass(frozen=True)
class Search:
    """Where to look (exactly one of ``api``, ``catalog``, ``items``), what to keep, how to reach it."""

    api: str | None = None
    catalog: str | None = None
    items: str | None = None
    filter: ItemFilter = ItemFilter()
    access: Access = Access()
    band_aliases: Mapping[str, str] = field(default_factory=dict)
    preset: str | None = None
    page_size: int = 100
    value_rules: Mapping[str, tuple[ValueRule, ...]] = field(default_factory=dict)  # by collection id
    shift_s2_channels: bool = False  # sample cubes: S2 bands + 1000 DN (``cubes``, ``--shift-s2-channels``)

    def rules_for(self, item: pystac.Item) -> tuple[ValueRule, ...]:
        """The preset's scale/offset rules for ``item``'s collection (for ``bands.match_bands``)."""
        return self.value_rules.get(item.collection_id or "", ())

    def __post_init__(self) -> None:
        given = [name for name in ("api", "catalog", "items") if getattr(self, name)]
        if len(given) > 1:
            raise ConfigError(f"give only one of --api, --catalog, --items (got {', '.join('--' + g for g in given)})")

    @classmethod
    def from_config(cls, config: RunConfig) -> Search:
        """The search a run configuration describes, with a named ``--catalog`` preset expanded."""
        search = cls(
            api=config.api, catalog=config.catalog, items=config.items,
            filter=ItemFilter(
                collections=config.collections, bbox=config.bbox, intersects=config.intersects,
                datetime=config.datetime, ids=config.ids, query=config.query, filter=config.filter,
                sortby=config.sortby, max_items=config.max_items,
            ),
            access=config.access(), band_aliases=dict(config.bands), page_size=config.page_size,
            shift_s2_channels=config.shift_s2_channels,
        )
        preset = find_preset(config.catalog)
        return search.with_preset(preset) if preset else search

    def with_preset(self, preset: Preset) -> Search:
        """Search ``preset``'s API: collection aliases resolved, its band map and access needs added."""
        collections = tuple(preset.collection(c).id for c in self.filter.collections)
        aliases: dict[str, str] = {}
        for cid in collections:
            aliases.update(preset.collection(cid).bands)
        return replace(
            self, api=preset.api, catalog=None, preset=preset.name,
            filter=replace(self.filter, collections=collections),
            access=self.access.with_defaults(preset.gdal, preset.signing),
            band_aliases={**aliases, **self.band_aliases},
            value_rules={c.id: c.values for c in preset.collections.values() if c.values},
        )

    @property
    def source(self) -> str:
        """Where the items come from, safe to print."""
        if self.api:
            return redact_text(self.api) + (f" (preset {self.preset})" if self.preset else "")
        return redact_text(self.items or self.catalog or "the bundled sample catalog")

    def items_found(self) -> list[pystac.Item]:
        """The matching items, signed when the source needs it; an empty answer is an error."""
        if self.api:
            from .api import search_api

            found = search_api(self.api, self.filter, self.access, self.page_size)
        elif self.items and is_cube_source(self.items):
            cubes = cube_items(self.items, self.filter.collections, shift_s2=self.shift_s2_channels)
            found = list(apply(cubes, self.filter))
        elif self.items:
            read = read_item_file(self.items, self.access)
            found = list(apply(only_collections(read, self.filter.collections) if self.filter.collections else read,
                               self.filter))
        else:
            found = list(apply(catalog_items(self.catalog or sample_catalog_href(), self.filter.collections,
                                             self.access), self.filter))
        if not found:
            raise ResolveError(f"no items matched in {self.source} ({self.filter.describe()})")
        return [self.access.sign(item) for item in found]


def resolve_items(*, catalog: str | None = None, items: str | None = None, api: str | None = None,
                  filter: ItemFilter = ItemFilter(), access: Access = Access()) -> list[pystac.Item]:
    """Shortcut for ``Search(...).items_found()``."""
    return Search(api=api, catalog=catalog, items=items, filter=filter, access=access).items_found()
