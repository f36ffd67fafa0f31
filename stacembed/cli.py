"""The ``stacembed`` command line: parse flags, build a RunConfig, call the Python API.

Errors a user can fix are printed as one line (``stacembed: error: ...``) with exit code 1;
``-v`` shows the traceback too.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from . import __version__
from .config import DEVICES, FORMATS, LOADERS, RESAMPLING, RunConfig
from .errors import StacembedError

RUN_EXAMPLES = """
\b
Examples:
  # the bundled sample catalog and demo model, offline
  stacembed run --out out/
\b
  # a static catalog, one collection, an area and a season
  stacembed run --catalog https://example.com/catalog.json --collection landsat-c2-l2 \\
      --bbox -35.0,-8.1,-34.8,-7.9 --datetime 2024-06-01/2024-08-31 \\
      --model ./my-model.json --out out/
\b
  # everything from a YAML file, one flag overridden
  stacembed run --config run.yaml --batch-size 64
"""


class _Group(click.Group):
    """Turn StacembedError into one line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StacembedError as exc:
            if ctx.meta.get("stacembed.verbose"):
                raise
            click.echo(f"stacembed: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="stacembed")
def main() -> None:
    """STAC-native embeddings: STAC items in, embedding STAC items (GeoParquet + COG) out."""


@main.command(epilog=RUN_EXAMPLES)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of run options; flags override it.")
@click.option("--collection", help="Collection id of the items to embed (default: the only one in the source).")
@click.option("--catalog", help="Static catalog.json / collection.json, local path or http(s) URL. Default: the bundled sample catalog.")
@click.option("--items", help="Items file: ItemCollection JSON, ndjson, or stac-geoparquet.")
@click.option("--bbox", help="W,S,E,N in WGS84 degrees; keeps items that intersect it.")
@click.option("--datetime", "datetime_", help="RFC 3339 datetime or interval, e.g. 2024-01-01/2024-06-30 or 2024-01-01/..")
@click.option("--ids", help="Comma-separated item ids.")
@click.option("--max-items", type=int, help="Stop after this many matched items.")
@click.option("--model", help="Model card: a built-in name (see `stacembed models list`) or an MLM item path/URL.")
@click.option("--weights", help="Weights file (safetensors or state dict), or 'random' to run untrained.")
@click.option("--chip-size", type=int, help="Chip size in pixels (default: the card's input size).")
@click.option("--stride", type=int, help="Chip step in pixels (default: the chip size).")
@click.option("--min-valid", type=float, help="Skip chips with a smaller fraction of valid pixels (default 0.5).")
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS), help="Output format; repeat for several (default: both).")
@click.option("--batch-size", type=int, help="Chips per forward pass (default 16).")
@click.option("--device", type=click.Choice(DEVICES), help="auto picks cuda, then mps, then cpu.")
@click.option("--crs", help="Resample to this CRS (explicit; default keeps the native grid).")
@click.option("--resolution", type=float, help="Resample to this pixel size in CRS units.")
@click.option("--resampling", type=click.Choice(RESAMPLING), help="Resampling method with --crs/--resolution.")
@click.option("--loader", type=click.Choice(LOADERS), help="Array loader (default stackstac).")
@click.option("--output-collection", help="Id of the output collection (default: <source collection>-<model>).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory for the STAC catalog.")
@click.option("--dry-run", is_flag=True, default=None, help="Print the plan (items, chips, output size) and stop.")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
@click.pass_context
def run(ctx: click.Context, config_file: str | None, verbose: int, quiet: bool, **flags: Any) -> None:
    """Embed STAC items with a backbone model and publish the embeddings as a STAC catalog."""
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, quiet)
    flags["datetime"] = flags.pop("datetime_")
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if quiet:
        given["progress"] = False
    config = RunConfig.from_yaml(config_file, given) if config_file else RunConfig.from_mapping(given)

    from . import pipeline

    if config.dry_run:
        _print_plan(pipeline.plan(config), config)
        return
    summary = pipeline.run(config)
    if not quiet:
        click.echo(
            f"{len(summary.items_done)} item(s) embedded ({summary.chips} chips), "
            f"{len(summary.items_resumed)} already done; catalog: {summary.catalog}"
        )


@main.group()
def models() -> None:
    """Model cards (STAC MLM items) stacembed knows by name."""


@models.command("list")
def models_list() -> None:
    """List the built-in model cards."""
    from .models import list_cards, load_card

    for name, path in list_cards().items():
        card = load_card(str(path))
        click.echo(f"{name}\t{card.architecture}\t{len(card.bands)} bands\t{card.embedding_size}-d")


@models.command("describe")
@click.argument("name")
def models_describe(name: str) -> None:
    """Show a model card's bands, input size, scaling and weights."""
    from .models import resolve_card

    card = resolve_card(name)
    click.echo(json.dumps({
        "name": card.name, "architecture": card.architecture, "bands": list(card.bands),
        "input_size": list(card.input_size), "embedding_size": card.embedding_size,
        "value_scaling": list(card.value_scaling), "weights": card.weights_href,
        "pretrained": card.pretrained,
    }, indent=2))


def _print_plan(plan: dict, config: RunConfig) -> None:
    click.echo(f"model {plan['model']}: bands {', '.join(plan['bands'])}; "
               f"{plan['chip_size']} px chips every {plan['stride']} px")
    width = max(len(row["id"]) for row in plan["items"])
    click.echo(f"{'item':<{width}}  {'chips':>6}  grid")
    for row in plan["items"]:
        click.echo(f"{row['id']:<{width}}  {row['chips']:>6}  {row['grid']}")
    size = plan["estimated_bytes"]
    click.echo(f"{len(plan['items'])} items, {plan['chips']} chips (at most: --min-valid may skip some), "
               f"about {_human_size(size)} of embeddings -> {config.out / plan['collection']}")


def _human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet or not verbose else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stacembed").setLevel(level)
