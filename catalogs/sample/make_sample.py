"""Build the bundled sample catalog from real Landsat 7 ETM+ pixels.

Source: ``tif/L7_ETMs.tif`` of the R package *stars*, as shipped by Debian's ``r-cran-stars``
(get it without R: ``apt-get download r-cran-stars && dpkg -x r-cran-stars_*.deb x``, then
``find x -name L7_ETMs.tif``). It is a 349 x 352 px subset of a Landsat 7 ETM+ scene near
Olinda, Brazil: six reflective bands (1, 2, 3, 4, 5, 7) as uint8, 28.5 m pixels, EPSG:31985.
Landsat data is public domain (USGS); stars is Apache-2.0.

The scene is cut into 2 x 2 items along pixel boundaries (a pure window copy: no resampling),
each with one Cloud-Optimized GeoTIFF per band like USGS Collection 2 items, and STAC 1.1
metadata (``proj:code``, ``bands`` with ``eo:common_name``). ``--check`` proves that the four
tiles mosaic back into the source array bit for bit.

The acquisition date is not documented by the source. The items therefore carry the range in
which such an image can have been taken: from Landsat 7's launch (1999-04-15) to the failure of
its scan-line corrector (2003-05-31), after which every ETM+ image has wedge-shaped gaps that
this one does not have.

Usage:  python catalogs/sample/make_sample.py [PATH/TO/L7_ETMs.tif] [--check]
"""

from __future__ import annotations

import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pystac
import rasterio
import rasterio.warp
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path("/tmp/stars/x/usr/lib/R/site-library/stars/tif/L7_ETMs.tif")
COLLECTION = "landsat-etm-sample"
START = datetime(1999, 4, 15, tzinfo=timezone.utc)
END = datetime(2003, 5, 31, 23, 59, 59, tzinfo=timezone.utc)
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
# (asset key, band name, eo common name, centre wavelength um, full width half max um)
BANDS = [
    ("blue", "B1", "blue", 0.485, 0.07),
    ("green", "B2", "green", 0.56, 0.08),
    ("red", "B3", "red", 0.66, 0.06),
    ("nir08", "B4", "nir", 0.835, 0.13),
    ("swir16", "B5", "swir16", 1.65, 0.2),
    ("swir22", "B7", "swir22", 2.22, 0.26),
]
EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
]


def tiles(height: int, width: int) -> list[tuple[str, Window]]:
    """Four quadrant windows (r0c0 .. r1c1) that partition the image exactly."""
    rows = [(0, height // 2), (height // 2, height - height // 2)]
    cols = [(0, width // 2), (width // 2, width - width // 2)]
    return [(f"L7-olinda-r{r}c{c}", Window(col_off, row_off, w, h))
            for r, (row_off, h) in enumerate(rows) for c, (col_off, w) in enumerate(cols)]


def write_band(path: Path, data: np.ndarray, profile: dict) -> None:
    with rasterio.open(path, "w", driver="COG", compress="deflate", blocksize=256, overviews="none",
                       **profile) as dst:
        dst.write(data[None])


def make_item(src: rasterio.DatasetReader, item_id: str, window: Window, item_dir: Path) -> pystac.Item:
    transform = src.window_transform(window)
    height, width = int(window.height), int(window.width)
    bounds = rasterio.windows.bounds(window, src.transform)
    footprint = rasterio.warp.transform_geom(
        src.crs, "EPSG:4326",
        {"type": "Polygon", "coordinates": [[(bounds[0], bounds[1]), (bounds[2], bounds[1]),
                                             (bounds[2], bounds[3]), (bounds[0], bounds[3]),
                                             (bounds[0], bounds[1])]]},
        precision=7,
    )
    coords = np.array(footprint["coordinates"][0])
    item = pystac.Item(
        id=item_id, geometry=footprint,
        bbox=[float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max())],
        datetime=None, start_datetime=START, end_datetime=END,
        properties={
            "description": (f"Quadrant {item_id[-4:]} of a Landsat 7 ETM+ subset near Olinda, Brazil. "
                            "Acquisition date undocumented: the range spans Landsat 7 launch to SLC failure."),
            "platform": "landsat-7", "constellation": "landsat", "instruments": ["etm+"], "gsd": 28.5,
            "proj:code": "EPSG:31985", "proj:shape": [height, width],
            "proj:transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
            "proj:bbox": list(bounds),
        },
        stac_extensions=EXTENSIONS,
    )
    profile = {"width": width, "height": height, "count": 1, "dtype": "uint8", "crs": src.crs, "transform": transform}
    for index, (key, name, common, wavelength, fwhm) in enumerate(BANDS, start=1):
        write_band(item_dir / f"{key}.tif", src.read(index, window=window), profile)
        item.add_asset(key, pystac.Asset(
            href=str(item_dir / f"{key}.tif"), media_type=COG, roles=["data"],
            title=f"Band {name[1:]} ({common})",
            extra_fields={"bands": [{"name": name, "eo:common_name": common, "eo:center_wavelength": wavelength,
                                     "eo:full_width_half_max": fwhm, "data_type": "uint8",
                                     "raster:spatial_resolution": 28.5}]},
        ))
    return item


def build(source: Path) -> None:
    collection_dir = HERE / COLLECTION
    shutil.rmtree(collection_dir, ignore_errors=True)
    catalog = pystac.Catalog("stacembed-sample", "Sample imagery bundled with stacembed.", title="stacembed sample")
    collection = pystac.Collection(
        id=COLLECTION,
        description=("Four quadrants of a real Landsat 7 ETM+ subset (349 x 352 px, 28.5 m, six reflective "
                     "bands) near Olinda, Brazil, one COG per band. Pixels: public domain (USGS), "
                     "distributed in the R package stars (Apache-2.0) as tif/L7_ETMs.tif."),
        extent=pystac.Extent(pystac.SpatialExtent([[0, 0, 0, 0]]), pystac.TemporalExtent([[START, END]])),
        license="other", title="Landsat 7 ETM+ sample (Olinda)",
        providers=[pystac.Provider("USGS", roles=[pystac.ProviderRole.PRODUCER, pystac.ProviderRole.LICENSOR],
                                   url="https://www.usgs.gov/landsat-missions")],
        summaries=pystac.Summaries({"platform": ["landsat-7"], "instruments": ["etm+"], "gsd": [28.5]}),
    )
    collection.add_link(pystac.Link("license", "https://www.usgs.gov/information-policy-statement",
                                    "text/html", "USGS information policy: Landsat data is public domain"))
    catalog.add_child(collection)
    with rasterio.open(source) as src:
        for item_id, window in tiles(src.height, src.width):
            item_dir = collection_dir / item_id
            item_dir.mkdir(parents=True)
            collection.add_item(make_item(src, item_id, window, item_dir))
    collection.update_extent_from_items()
    catalog.normalize_hrefs(str(HERE))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)


def check(source: Path) -> None:
    """The four tiles mosaic back into the source: same pixels, same grid."""
    catalog = pystac.Catalog.from_file(str(HERE / "catalog.json"))
    with rasterio.open(source) as src:
        expected = src.read()
        mosaic = np.zeros_like(expected)
        for item in catalog.get_items(recursive=True):
            for index, (key, *_rest) in enumerate(BANDS):
                with rasterio.open(item.assets[key].get_absolute_href()) as ds:
                    col, row = ~src.transform * (ds.transform.c, ds.transform.f)
                    assert float(col).is_integer() and float(row).is_integer()
                    assert ds.transform == src.window_transform(Window(int(col), int(row), ds.width, ds.height))
                    mosaic[index, int(row):int(row) + ds.height, int(col):int(col) + ds.width] = ds.read(1)
    assert np.array_equal(mosaic, expected), "tiles do not reproduce the source"
    print("check: 4 items mosaic back into the source bit for bit")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--check"]
    source = Path(args[0]) if args else DEFAULT_SOURCE
    build(source)
    if "--check" in sys.argv:
        check(source)
