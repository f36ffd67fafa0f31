"""The offline validator itself: it must catch what the schemas forbid."""

import copy

from conftest import DEMO_CARD, SAMPLE
from stac_validation import validate, validate_tree

ITEM = {
    "type": "Feature", "stac_version": "1.0.0", "id": "x", "stac_extensions": [],
    "geometry": {"type": "Point", "coordinates": [0, 0]}, "bbox": [0, 0, 0, 0],
    "properties": {"datetime": "2024-01-01T00:00:00Z"}, "links": [], "assets": {},
}


def test_valid_and_invalid_items():
    assert validate(ITEM) == []
    broken = copy.deepcopy(ITEM)
    del broken["id"]
    assert any("'id' is a required property" in e for e in validate(broken))


def test_projection_v2_rejects_proj_epsg():
    item = copy.deepcopy(ITEM)
    item.update(stac_version="1.1.0",
                stac_extensions=["https://stac-extensions.github.io/projection/v2.0.0/schema.json"])
    item["properties"]["proj:code"] = "EPSG:32633"
    assert validate(item) == []
    item["properties"]["proj:epsg"] = 32633
    assert validate(item)


def test_unknown_extension_is_an_error():
    item = copy.deepcopy(ITEM)
    item["stac_extensions"] = ["https://example.com/ext/v1.0.0/schema.json"]
    assert validate(item) == ["schema not bundled: https://example.com/ext/v1.0.0/schema.json"]


def test_bundled_sample_catalog_and_demo_card_validate():
    results = validate_tree(SAMPLE.parent)
    assert len(results) == 6 and not any(results.values()), results
    cards = validate_tree(DEMO_CARD.parent)  # the demo card and every other built-in card
    assert DEMO_CARD in cards and not any(cards.values()), cards
