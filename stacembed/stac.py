"""The STAC version, extension schemas and media types of every document stacembed writes.

One place for them, light to import: the run's catalog (``catalog``), the derived products
(``analysis.derived``) and the importers (``importers``) all take them from here.
"""

STAC_VERSION = "1.0.0"
EMBEDDINGS = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
ITEM_ASSETS = "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"
MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
PARQUET = "application/vnd.apache.parquet"
MEDIA_TYPES = {"geoparquet": PARQUET, "geotiff": COG}
CATALOG_TITLE = "stacembed output"  # the root catalog's title
