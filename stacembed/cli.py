"""The ``stacembed`` command line: parse flags, build a RunConfig, call the Python API.

Errors a user can fix are printed as one line (``stacembed: error: ...``) with exit code 1;
``-v`` shows the traceback too.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click

from ._version import __version__
from .access import (
    ASSET_HEADERS_ENV,
    HEADERS_ENV,
    SIGNERS,
    Access,
    install_log_redaction,
    parse_headers,
    redact,
    redact_text,
)
from .config import (
    DEVICES,
    DTYPES,
    FORMATS,
    LOADERS,
    POOLINGS,
    PRECISIONS,
    QUANTIZATION,
    RESAMPLING,
    SEARCH_FORMATS,
    RunConfig,
)
from .errors import StacembedError
from .learn import SPLITS, TASKS

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
  # a STAC API search, low cloud cover, published back to a transactional API
  stacembed run --api https://earth-search.aws.element84.com/v1 --collection sentinel-2-l2a \\
      --bbox 11.0,46.0,11.2,46.2 --datetime 2024-07 --filter "eo:cloud_cover < 10" \\
      --model ./s2-model.json --out out/ \\
      --publish http://localhost:8082 --asset-base-href https://data.example.com/out
\b
  # a public API by preset name (see `stacembed presets`)
  stacembed run --catalog earth-search --collection sentinel-2-l2a --ids S2B_33TUL_20240704_0_L2A \\
      --model ./s2-model.json --out out/
\b
  # everything from a YAML file, one flag overridden
  stacembed run --config run.yaml --batch-size 64
"""

SEARCH_EXAMPLES = """
\b
Examples:
  # what the bundled sample catalog holds
  stacembed search
\b
  # a STAC API search, saved as stac-geoparquet for `stacembed run --items`
  stacembed search --api https://earth-search.aws.element84.com/v1 --collection sentinel-2-l2a \\
      --bbox 11.0,46.0,11.2,46.2 --datetime 2024-07 --query '{"eo:cloud_cover": {"lt": 10}}' \\
      --sortby eo:cloud_cover --max-items 20 --format geoparquet -o items.parquet
"""

PUBLISH_EXAMPLES = """
\b
Examples:
  # files uploaded to https://data.example.com/out, catalog to a pgstac API
  stacembed publish out/ --api http://localhost:8082 --asset-base-href https://data.example.com/out \\
      --header "Authorization=Bearer $TOKEN"
"""


MODELS_EXAMPLES = """
\b
Examples:
  stacembed models list
  stacembed models describe stacembed-demo-landsat
  stacembed models export stacembed-demo-landsat --out my-model/
"""


class _Group(click.Group):
    """Turn StacembedError into one line and a non-zero exit; anything else (a bug) keeps its
    traceback. Where errors reach the terminal, every URL in them is masked (query values,
    userinfo) and header values in use are removed."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            # The reader went away (`stacembed models list | head`): stop quietly, as Unix tools do;
            # stdout goes to /dev/null so that Python's flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except StacembedError as exc:
            if not ctx.meta.get("stacembed.verbose"):
                click.echo(f"stacembed: error: {redact_text(str(exc))}", err=True)
                sys.exit(1)
            _print_traceback(exc)
        except Exception as exc:
            _print_traceback(exc)


def _print_traceback(exc: BaseException) -> None:
    click.echo(redact_text("".join(traceback.format_exception(exc))).rstrip(), err=True)
    sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="stacembed")
def main() -> None:
    """STAC-native embeddings: STAC items in, embedding STAC items (GeoParquet + COG) out."""


def entry() -> NoReturn:
    """The ``stacembed`` program (console script and ``python -m stacembed``): ``main``, then
    the process ends without tearing the interpreter down (``quick_exit``)."""
    try:
        main()
    except SystemExit as exc:
        quick_exit(exc.code)
    quick_exit(0)  # click's standalone mode always ends in SystemExit; this is for safety


def quick_exit(code: int | str | None) -> NoReturn:
    """End the process as Python would at exit, less freeing every module and object one by one.

    When the command returns, its outputs are complete (written, closed, renamed into place).
    Python would then deallocate everything it holds before the process ends: with torch,
    timm and GDAL loaded, 0.23 s after a `stacembed run` (measured on 2 cores: median of 5
    pairs of runs of 81 ViT-S chips, 0.07-0.36 s), for memory the operating system takes back
    at once. Everything else happens as in Python's own exit, in its order: threads that are
    not daemons are waited for, exit handlers run (``atexit``:
    logging, temporary directories, dask clusters, coverage), the standard streams are flushed,
    and the status is Python's (None -> 0, a message -> printed, 1). ``STACEMBED_QUICK_EXIT=0``
    leaves the exit to Python.
    """
    if os.environ.get("STACEMBED_QUICK_EXIT", "1") == "0":
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code & 0xFF
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()  # what Python's exit does first: join non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(status)


def _search_options(func: Callable) -> Callable:
    """The options that say which items to use and how to reach them (``run`` and ``search``)."""
    options = [
        click.option("--api", help="STAC API root URL to search with pystac-client."),
        click.option("--catalog", help="Static catalog.json / collection.json (path or http(s) URL), or a preset "
                                        "name (see `stacembed presets`). Default: the bundled sample catalog."),
        click.option("--items", help="Items file: ItemCollection JSON, ndjson, or stac-geoparquet; or sample cubes "
                                      "(*.zarr.zip: a file, a folder of them, a folder of modality folders)."),
        click.option("--collection", "collections", multiple=True,
                     help="Collection id; repeat or comma-separate for several."),
        click.option("--bbox", help="W,S,E,N in WGS84 degrees; keeps items that intersect it."),
        click.option("--intersects",
                     help="GeoJSON file (geometry, Feature or FeatureCollection) items must intersect."),
        click.option("--datetime", "datetime_",
                     help="RFC 3339 datetime or interval, e.g. 2024-01-01/2024-06-30 or 2024-01-01/.."),
        click.option("--ids", help="Comma-separated item ids."),
        click.option("--query", help='Query extension JSON (or @file), e.g. \'{"eo:cloud_cover": {"lt": 10}}\'.'),
        click.option("--filter", "filter_", help="CQL2 filter, text or JSON (or @file), e.g. \"eo:cloud_cover < 10\"."),
        click.option("--filter-lang", type=click.Choice(["cql2-text", "cql2-json"]),
                     help="Language of --filter (default: guessed)."),
        click.option("--sortby", help="Sort fields, e.g. -eo:cloud_cover,+datetime."),
        click.option("--max-items", type=int, help="Stop after this many matched items."),
        click.option("--page-size", type=int, help="Items per page of API results (default 100)."),
        click.option("--header", "headers", multiple=True, metavar="KEY=VALUE",
                     help="HTTP header for the STAC API, catalog or item file given here (and --publish), sent to "
                          "its origin only, never to asset hosts (repeatable; also "
                          f"${HEADERS_ENV}, one per line)."),
        click.option("--asset-header", "asset_headers", multiple=True, metavar="KEY=VALUE",
                     help="HTTP header for every asset read (GDAL), whatever its host (repeatable; also "
                          f"${ASSET_HEADERS_ENV}, one per line)."),
        click.option("--keep-href-query", is_flag=True, default=None,
                     help="Keep query strings in hrefs written to outputs (derived_from, emb:source-data, search "
                          "results); by default they and any user:password are removed. Known credential "
                          "parameters (sig, token, X-Amz-*, ...) are removed anyway."),
        click.option("--sign", type=click.Choice(SIGNERS), help="Sign asset hrefs (needs the matching extra)."),
        click.option("--gdal", multiple=True, metavar="KEY=VALUE",
                     help="GDAL config option for asset reads (repeatable)."),
        click.option("--aws-unsigned", is_flag=True, default=None, help="Read public S3 buckets without credentials."),
        click.option("--requester-pays", is_flag=True, default=None, help="Accept requester-pays S3 charges."),
        click.option("--timeout", type=float, help="Seconds to wait for the API and asset reads (default 30)."),
        click.option("--retries", type=int, help="Retries with backoff for the API and asset reads (default 3)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.command(epilog=RUN_EXAMPLES)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file of run options; flags override it.")
@_search_options
@click.option("--band", "bands", multiple=True, metavar="BAND=ASSET",
              help="Use asset ASSET for the model's band BAND (repeatable).")
@click.option("--shift-s2-channels", is_flag=True, default=None,
              help="Sample cubes: add 1000 to the S2 bands' DN, as the Embed2Scale loader's shift_s2_channels "
                   "(to match SSL4EO-S12 v1.1); recorded in the outputs.")
@click.option("--model", help="Model card: a built-in name (see `stacembed models list`) or an MLM item path/URL.")
@click.option("--weights", help="Weights file (safetensors or state dict), or 'random' to run untrained.")
@click.option("--chip-size", type=int, help="Chip size in pixels (default: the card's input size).")
@click.option("--stride", type=int, help="Chip step in pixels (default: the chip size).")
@click.option("--min-valid", type=float, help="Skip chips with a smaller fraction of valid pixels (default 0.5).")
@click.option("--pooling", type=click.Choice(POOLINGS),
              help="default (the model's own), cls, mean, max, or none for dense patch embeddings (GeoTIFF).")
@click.option("--layer",
              help="Take an intermediate block's output: an index into the backbone's blocks/stages, or a module name.")
@click.option("--dtype", type=click.Choice(DTYPES),
              help="Storage type of the embeddings (default float32; int8 is linearly quantized).")
@click.option("--quantization", type=click.Choice(QUANTIZATION),
              help="int8 scale/offset per dimension (default) or one for all.")
@click.option("--time-steps", type=int,
              help="Temporal models: acquisitions per location (see README for how they are chosen).")
@click.option("--offline", is_flag=True, default=None,
              help="Never download weights (also HF_HUB_OFFLINE=1 / STACEMBED_OFFLINE=1).")
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS),
              help="Output format; repeat for several (default: both; GeoTIFF only with --pooling none).")
@click.option("--batch-size", type=int,
              help="Chips per forward pass (default: 16 on the CPU, sized to free memory on CUDA).")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="fp32 (default), or bf16/fp16 autocast (fp16: CUDA only).")
@click.option("--compile", is_flag=True, default=None, help="torch.compile the model (worth it for long runs on GPUs).")
@click.option("--threads", type=int,
              help="Torch threads per forward pass (default: the usable cores, less --reader-threads when above 1, "
                   "divided among --streams).")
@click.option("--streams", type=int,
              help="Forward passes running at once on the CPU (default: one per core up to 4, the cores split among "
                   "them; 1 with --threads, --compile or a GPU).")
@click.option("--reader-threads", type=int,
              help="Threads reading and decoding pixels (default 1: the prefetch thread itself).")
@click.option("--dask-address", help="Run on this dask.distributed scheduler (tcp://host:8786); --out must be shared.")
@click.option("--workers", type=int, help="Run on a local dask cluster of this many worker processes.")
@click.option("--tile-chips", type=int,
              help="On a cluster, split items of more chips than this into tasks of chip-row bands (default 4096).")
@click.option("--prefetch", type=int,
              help="Batches read ahead in a thread while the model runs; 0 reads in line (default: 2 on GPUs or when "
                   "--threads x --streams leaves a core free, else 0).")
@click.option("--device", type=click.Choice(DEVICES), help="auto picks cuda, then mps, then cpu.")
@click.option("--crs", help="Resample to this CRS (explicit; default keeps the native grid).")
@click.option("--resolution", type=float, help="Resample to this pixel size in CRS units.")
@click.option("--resampling", type=click.Choice(RESAMPLING), help="Resampling method with --crs/--resolution.")
@click.option("--loader", type=click.Choice(LOADERS),
              help="auto (default): direct window reads on the native grid, stackstac when resampling; or force "
                   "stackstac / odc.")
@click.option("--output-collection", help="Id of the output collection (default: <source collection>-<model>).")
@click.option("--modality", "modalities", multiple=True, metavar="INPUT=COLLECTION",
              help="Models of several inputs: the collection that serves the card's input INPUT, e.g. "
                   "S1GRD=sentinel-1-grd (repeatable; default: the --catalog preset's; see README).")
@click.option("--primary", metavar="INPUT",
              help="The input whose items are the locations, on whose grid the others are warped "
                   "(default: the card's first).")
@click.option("--max-time-gap", metavar="DURATION",
              help="Farthest in time another input's item may be from a location's, e.g. 10d or 36h "
                   "(default: no limit; static inputs such as DEM ignore time).")
@click.option("--modality-resampling", multiple=True, metavar="INPUT=METHOD",
              help="Resampling of input INPUT onto the primary's grid (default: nearest for classes, else "
                   "bilinear; repeatable).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory for the STAC catalog.")
@click.option("--publish", help="Also publish the results to this STAC API (Transactions extension).")
@click.option("--asset-base-href", help="With --publish: URL where the --out directory's files are served.")
@click.option("--dry-run", is_flag=True, default=None, help="Print the plan (items, chips, output size) and stop.")
@click.option("--verify", is_flag=True, default=None,
              help="On a rerun, check the checksums of the finished items it keeps (their sizes are always checked).")
@click.option("--head", "head", metavar="HEAD",
              help="Also predict with a head of `stacembed train` (its directory or card): maps added to --out.")
@click.option("--probabilities", is_flag=True, help="With --head: also write class probabilities.")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
@click.pass_context
def run(ctx: click.Context, config_file: str | None, head: str | None, probabilities: bool, verbose: int,
        quiet: bool, **flags: Any) -> None:
    """Embed STAC items with a backbone model and publish the embeddings as a STAC catalog."""
    config = _config(ctx, config_file, verbose, quiet, flags)
    from .collector import start_up

    with start_up() as ready:
        from . import pipeline

        if config.dry_run:
            _print_plan(pipeline.plan(config), config)
            return
        if head:
            from .learn.predict import embed_and_predict

            summary, predicted = embed_and_predict(config, head, probabilities=probabilities, ready=ready)
        else:
            summary, predicted = pipeline.run(config, ready=ready), None
    if not quiet:
        click.echo(
            f"{len(summary.items_done)} item(s) embedded ({summary.chips} chips), "
            f"{len(summary.items_resumed)} already done; catalog: {summary.catalog}"
        )
        if predicted is not None:
            click.echo(f"{predicted.chips} chips of {len(predicted.items)} item(s) predicted: {predicted.collection}")
        if config.publish:
            click.echo(f"published {summary.published} item(s) to {redact(config.publish)}")


@main.command(epilog=SEARCH_EXAMPLES)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file of options; flags override it.")
@_search_options
@click.option("--format", "output_format", type=click.Choice(SEARCH_FORMATS),
              help="Output format (default: table on a terminal, json otherwise).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file instead of standard output.")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.pass_context
def search(ctx: click.Context, config_file: str | None, output_format: str | None, output: str | None,
           verbose: int, **flags: Any) -> None:
    """Find the items a run would embed, without running anything."""
    config = _config(ctx, config_file, verbose, False, flags, need_out=False)
    from . import search as find_items
    from .resolve.export import write_items

    found = find_items(config)
    fmt = output_format or ("table" if output is None and sys.stdout.isatty() else "json")
    write_items(found, fmt, output, keep_query=config.keep_href_query)


@main.command(epilog=PUBLISH_EXAMPLES)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--api", required=True, help="STAC API root URL with the Transactions extension.")
@click.option("--asset-base-href", required=True,
              help="URL where DIRECTORY's files are served (asset hrefs are rewritten under it).")
@click.option("--header", "headers", multiple=True, metavar="KEY=VALUE",
              help=f"HTTP header, e.g. Authorization=... (repeatable; also ${HEADERS_ENV}).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for each request.")
@click.option("--retries", type=int, default=3, show_default=True, help="Retries with backoff.")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.pass_context
def publish(ctx: click.Context, directory: str, api: str, asset_base_href: str, headers: tuple[str, ...],
            timeout: float, retries: int, verbose: int) -> None:
    """Create or update a run's collection and items on a STAC API (idempotent)."""
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, False)
    from .publish import publish_catalog

    access = Access(headers=parse_headers(headers), timeout=timeout, retries=retries)
    count = publish_catalog(directory, api, asset_base_href=asset_base_href, access=access)
    click.echo(f"published {count} item(s) to {redact(api)}")


@main.command()
def presets() -> None:
    """List the public STAC API presets usable as --catalog NAME."""
    from .resolve import load_presets

    for name, preset in load_presets().items():
        extras = [f"signing: {preset.signing}"] if preset.signing else []
        extras += ["needs credentials"] if preset.auth else []
        click.echo(f"{name}\t{preset.api}\t{', '.join(preset.collections)}"
                   + (f"\t({'; '.join(extras)})" if extras else ""))


def _config(ctx: click.Context, config_file: str | None, verbose: int, quiet: bool, flags: dict[str, Any],
            need_out: bool = True) -> RunConfig:
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, quiet)
    flags["datetime"] = flags.pop("datetime_")
    flags["filter"] = flags.pop("filter_")
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if quiet:
        given["progress"] = False
    if config_file:
        return RunConfig.from_yaml(config_file, given, need_out=need_out)
    return RunConfig.from_mapping(given, need_out=need_out)


@main.group(epilog=MODELS_EXAMPLES)
def models() -> None:
    """Model cards (STAC MLM items) stacembed knows by name."""


@models.command("list")
@click.option("--all", "show_all", is_flag=True,
              help="Also every backbone of TerraTorch's registry (with stacembed[terratorch]), usable as "
                   "--model terratorch:NAME.")
def models_list(show_all: bool) -> None:
    """List the built-in model cards (and, with --all, the registry backbones usable by name)."""
    from .models import list_cards, list_registry_names, load_card

    for name, path in list_cards().items():
        card = load_card(str(path))
        modalities = "+".join(entry.name for entry in card.inputs) if len(card.inputs) > 1 else ""
        click.echo("\t".join(part for part in (name, card.architecture, f"{len(card.bands)} bands", modalities,
                                                 f"{card.embedding_size}-d") if part))
    if show_all:
        names = list_registry_names()
        if not names:
            click.echo("(TerraTorch's registry: not installed; pip install 'stacembed[terratorch]')", err=True)
        for name in names:
            click.echo(f"{name}\tregistry")


@models.command("export")
@click.argument("name")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory to write the card (and weights) to.")
@click.option("--weights", help="Weights file to ship with the card (default: the card's own, when local or cached).")
def models_export(name: str, out_dir: str, weights: str | None) -> None:
    """Write a card as a standalone MLM item (with its weights when available)."""
    from pathlib import Path

    from .models import export_card, resolve_card
    from .models.export import unwritten_weights

    card = resolve_card(name)
    written = export_card(card, Path(out_dir), weights)
    for path in written:
        click.echo(str(path))
    missing = unwritten_weights(card, written)
    if missing:
        click.echo(f"warning: weights not written: {redact(missing)} is neither a local file nor cached, and export "
                   "does not download; model.json links it (--weights FILE ships a copy)", err=True)


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
    click.echo(f"source {plan['source']}")
    click.echo(f"model {plan['model']}: bands {', '.join(plan['bands'])}; "
               f"{plan['chip_size']} px chips every {plan['stride']} px")
    width = max(len(row["id"]) for row in plan["items"])
    click.echo(f"{'item':<{width}}  {'chips':>6}  grid")
    for row in plan["items"]:
        click.echo(f"{row['id']:<{width}}  {row['chips']:>6}  {row['grid']}")
    size = plan["estimated_bytes"]
    click.echo(f"{len(plan['items'])} items, {plan['chips']} chips (at most: --min-valid may skip some), "
               f"about {_human_size(size)} of embeddings -> {', '.join(map(str, plan['collection_dirs']))}")


def _human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _progress(quiet: bool) -> bool:
    """Progress bars on a terminal only, as `stacembed run` shows them (none in logs or pipes)."""
    return not quiet and sys.stderr.isatty()


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet or not verbose else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stacembed").setLevel(level)
    install_log_redaction()  # URLs in stacembed's, GDAL's and the HTTP libraries' messages masked


@main.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--strict", is_flag=True, help="Count declared extensions whose schema is not bundled as errors.")
def validate_command(paths: tuple[str, ...], strict: bool) -> None:
    """Validate STAC catalogs, collections and items offline against the bundled JSON schemas.

    A directory: every STAC document in it; a catalog or collection file: it and the local
    documents it links as child or item. One line per invalid document, and exit status 1.
    """
    from .validate import validate_paths

    checked = invalid = 0
    for report in validate_paths(paths):
        checked += 1
        line = report.line(strict=strict)
        if line:
            invalid += 1
            click.echo(line)
        elif report.unchecked:
            click.echo(f"{report.path}: not checked against {', '.join(report.unchecked)} (no bundled schema)",
                       err=True)
    if invalid:
        sys.exit(1)
    click.echo(f"{checked} STAC document{'s' if checked != 1 else ''} valid")


@main.command("quicklook")
@click.argument("catalog", type=click.Path(exists=True))
@click.option("--refit", is_flag=True,
              help="Fit the PCA basis anew over every item (default: keep the one the collection stores).")
@click.option("--sample", type=int,
              help="Vectors in the PCA sample (default 20000); a value other than the stored one refits.")
@click.option("--seed", type=int, help="Seed of the PCA sample (default 0); a value other than the stored one refits.")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.pass_context
def quicklook_command(ctx: click.Context, catalog: str, refit: bool, sample: int | None, seed: int | None,
                      verbose: int) -> None:
    """Draw PCA -> RGB quicklooks (PNG thumbnail, RGBA COG overview) of a catalog written before.

    CATALOG is a `stacembed run` output directory, its catalog.json or one collection.json.
    `stacembed run` draws them itself; this adds them to older catalogs, or redraws them.
    """
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, False)
    from .analysis.quicklook import write_quicklooks

    for result in write_quicklooks(catalog, refit=refit, sample=sample, seed=seed):
        skipped = f", {len(result.skipped)} without a chip" if result.skipped else ""
        click.echo(f"{result.collection_id}: quicklooks of {len(result.written)} item(s) drawn, "
                   f"{len(result.unchanged)} up to date{skipped}")


@main.command("cluster")
@click.argument("catalog")
@click.option("--k", "k", type=int, help="Number of clusters, 1-255 (not needed with --apply).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory (may be the embeddings' own --out): a collection of class maps is added to it.")
@click.option("--seed", type=int, default=0, show_default=True, help="k-means seed: the same seed, the same clusters.")
@click.option("--apply", "apply_href", metavar="CENTROIDS",
              help="Label with the centroids of an earlier `stacembed cluster` instead of fitting: its "
                   "centroids.parquet, collection.json or --out directory.")
@click.option("--batch-rows", type=int, default=4096, show_default=True, help="Vectors read and fitted at a time.")
@click.option("--output-collection", help="Id of the output collection (default: clusters-k<K>).")
@click.option("--no-table", "no_table", is_flag=True,
              help="Class maps only, no table of every chip with its footprint (dense embeddings: a row per pixel).")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
@click.pass_context
def cluster_command(ctx: click.Context, catalog: str, k: int | None, out: str, seed: int, apply_href: str | None,
                    batch_rows: int, output_collection: str | None, no_table: bool, verbose: int,
                    quiet: bool) -> None:
    """Cluster the embeddings of CATALOG (k-means, streamed) into class maps published as STAC.

    CATALOG is a `stacembed run` output directory, its catalog.json, a collection.json or an item
    (chip or dense embeddings, GeoParquet or GeoTIFF). Per embedding item: a uint8 class map COG
    on its chip grid, or patch grid (with a colour table), and the cluster of every chip or patch
    as GeoParquet; the collection stores the centroids for --apply.
    """
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, quiet)
    from .analysis.cluster import cluster_catalog

    result = cluster_catalog(catalog, out=out, k=k, seed=seed, centroids=apply_href, batch_rows=batch_rows,
                             output_collection=output_collection, progress=_progress(quiet), table=not no_table)
    if not quiet:
        click.echo(f"{result.chips} chips of {len(result.items)} item(s) in {result.centroids.k} clusters; "
                   f"centroids: {result.centroids_file}; catalog: {result.catalog}")


@main.command("train")
@click.option("--embeddings", required=True, help="Embeddings catalog: a `stacembed run` --out, catalog.json, "
              "collection.json or item.")
@click.option("--labels", required=True, help="Labels: a STAC label item or collection, a vector file (GeoJSON, "
              "GeoParquet, GeoPackage) or a raster (GeoTIFF/COG), in any CRS.")
@click.option("--label-column", help="The vector file's column of labels (default for STAC: label:properties).")
@click.option("--task", type=click.Choice(TASKS), default="classification", show_default=True)
@click.option("--head", "head_name",
              help="knn (k nearest chips), linear (a probe; the default) or mlp (one hidden layer); "
                   "decoder for segmentation (the default there).")
@click.option("--label-scale", type=int,
              help="Segmentation: label pixels per patch side (default: the patch's size in source pixels).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model directory to write (new).")
@click.option("--min-label-fraction", type=float, default=0.5, show_default=True,
              help="Leave out chips whose footprint labels cover less than this share.")
@click.option("--split", type=click.Choice(SPLITS), default="blocks", show_default=True,
              help="Hold out whole spatial blocks of chips, or whole items.")
@click.option("--block-size", type=int, default=8, show_default=True, help="Side of a spatial block, in chips.")
@click.option("--folds", type=int, help="Cross-validate over K folds of blocks (or items) instead of one split.")
@click.option("--validation-fraction", type=float, default=0.2, show_default=True,
              help="Share of the chips held out (one split).")
@click.option("--balance", type=click.Choice(["weights", "sampling", "none"]), default="weights", show_default=True,
              help="Skewed classes: inverse-frequency loss weights, balanced sampling, or nothing.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, help="Training epochs (linear, mlp; default 50).")
@click.option("--lr", type=float, help="Learning rate (default 3e-3).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--no-baseline", is_flag=True, help="Do not train the same head on the chips' band means.")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
@click.pass_context
def train_command(ctx: click.Context, embeddings: str, labels: str, label_column: str | None, task: str,
                  head_name: str | None, label_scale: int | None, out: str, min_label_fraction: float, split: str,
                  block_size: int, folds: int | None, validation_fraction: float, balance: str, seed: int,
                  epochs: int | None, lr: float | None, device: str, no_baseline: bool, verbose: int,
                  quiet: bool) -> None:
    """Train a light head on precomputed embeddings; validated on held-out places, with a baseline.

    Labels are brought onto the chips (majority class or mean value inside each footprint);
    whole spatial blocks (or items) are held out; the same head on each chip's band means shows
    what the embeddings add. Writes the head (safetensors), its MLM card, metrics.json, a
    confusion matrix and the held-out predictions.
    """
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, quiet)
    from .learn.train import TrainOptions, train

    options = TrainOptions(task=task, head=head_name, label_column=label_column,
                           min_label_fraction=min_label_fraction, split=split, block_size=block_size, folds=folds,
                           validation_fraction=validation_fraction, balance=None if balance == "none" else balance,
                           seed=seed, epochs=epochs, lr=lr, device=device, baseline=not no_baseline,
                           label_scale=label_scale)
    result = train(embeddings, labels, out=out, options=options, progress=_progress(quiet))
    if not quiet:
        click.echo(_scores_line(result.metrics))
        click.echo(f"head: {result.card}")


def _scores_line(metrics: dict[str, Any]) -> str:
    keys = ("accuracy", "macro_f1", "miou") if metrics["task"] != "regression" else ("rmse", "mae", "r2")
    parts = []
    for part in ("embeddings", "baseline"):
        scores = metrics.get(part, {})
        if "n" in scores:
            shown = ", ".join(f"{key} {scores[key]:.3f}" for key in keys if scores.get(key) is not None)
            parts.append(f"{part}: {shown}")
    unit = "tiles" if "tiles" in metrics else "chips"
    return f"{metrics[unit]} labelled {unit}; held out {sum(metrics['validation']['held_out'])}; " + "; ".join(parts)


@main.command("predict")
@click.option("--embeddings", required=True, help="Embeddings catalog, as for train.")
@click.option("--model", "head", required=True, help="The head: a `stacembed train` --out directory or its card.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory (may be the embeddings' own --out): a collection of predictions is added to it.")
@click.option("--probabilities", is_flag=True, help="Also write class probabilities (float32 bands).")
@click.option("--output-collection", help="Id of the output collection (default: predictions-<head>).")
@click.option("--no-table", "no_table", is_flag=True,
              help="Maps only, no table of every chip with its footprint (dense embeddings: a row per pixel).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
@click.pass_context
def predict_command(ctx: click.Context, embeddings: str, head: str, out: str, probabilities: bool,
                    output_collection: str | None, no_table: bool, device: str, verbose: int, quiet: bool) -> None:
    """Predict every chip of an embeddings catalog with a trained head; maps published as STAC."""
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, quiet)
    from .learn.predict import predict

    result = predict(embeddings, head, out=out, probabilities=probabilities, output_collection=output_collection,
                     device=device, progress=_progress(quiet), table=not no_table)
    if not quiet:
        click.echo(f"{result.chips} chips of {len(result.items)} item(s) predicted; catalog: {result.catalog}")


@main.group("import")
def import_group() -> None:
    """Embeddings other tools made, as an embeddings catalog every stacembed analysis reads."""


@import_group.command("aef", epilog="""Examples:

\b
  stacembed import aef 2024/23S/*.vrt --out aef/                       # whole files, referenced in place
  stacembed import aef https://data.source.coop/tge-labs/aef/v1/annual/2024/24S/FILE.tiff \\
      --bbox -35.0,-8.1,-34.8,-7.9 --out aef/                          # a box, copied north-up
  stacembed import aef --index aef_index.parquet --bbox -35.0,-8.1,-34.8,-7.9 --year 2024 --out aef/
  stacembed similar aef/ --point -34.88,-7.99
""")
@click.argument("sources", nargs=-1)
@click.option("--index", metavar="PARQUET",
              help="The dataset's aef_index.parquet (path or URL): import the files it lists under --bbox "
                   "(and in --year).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (STAC catalog).")
@click.option("--bbox", metavar="W,S,E,N",
              help="Copy only the pixels under this lon/lat box (north-up COGs in --out); else reference the files.")
@click.option("--year", type=int, help="The year of the embeddings (default: from the path, <year>/<zone>/<file>).")
@click.option("--output-collection", "collection_id", default="alphaearth-annual", show_default=True,
              help="Id of the collection written.")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.pass_context
def import_aef_command(ctx: click.Context, sources: tuple[str, ...], index: str | None, out: str, bbox: str | None,
                       year: int | None, collection_id: str, verbose: int) -> None:
    """Describe AlphaEarth Foundations annual embedding COGs (SOURCES: files or URLs, or --index) as a catalog.

    64 int8 bands A00..A63 per 10 m pixel, de-quantized by every reader as the dataset says
    (sign(q) * (|q| / 127.5)^2; -128: no data). Files stored bottom-up (Google's originals) need
    --bbox, or their north-up .vrt (Source Cooperative ships one beside each file).
    """
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, False)
    from .importers.aef import import_aef

    result = import_aef(list(sources), out, bbox=bbox, year=year, index=index, collection_id=collection_id)
    skipped = f"; {len(result.skipped)} file(s) without a pixel in the box skipped" if result.skipped else ""
    click.echo(f"{len(result.items)} AlphaEarth item(s) described{skipped}; catalog: {result.catalog}")


@main.group("export")
def export_group() -> None:
    """Embeddings as exchange tables: NeuCo-Bench CSV, one joint GeoParquet."""


@export_group.command("neuco")
@click.argument("catalogs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The CSV to write.")
@click.option("--mode", type=click.Choice(["sample", "chip"]), default="sample", show_default=True,
              help="One row per sample (the mean of its chips), or one per chip.")
@click.option("--sample-id", help="What names a sample: source_item (default; stacembed:sample, the sample id, "
                                 "for embeddings of sample cubes), item, or a chip column.")
@click.option("--dim", type=int, help="Pad the vectors with zeros to this many values (NeuCo-Bench's embedding_dim).")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.pass_context
def export_neuco_command(ctx: click.Context, catalogs: tuple[str, ...], output: str, mode: str,
                         sample_id: str | None, dim: int | None, verbose: int) -> None:
    """Write CATALOGS' embeddings as a NeuCo-Bench CSV: id, then columns 0..D-1."""
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, False)
    from .exports import export_neuco

    result = export_neuco(list(catalogs), output, mode=mode, dim=dim, sample_id=sample_id)
    filled = f"; {result.nan_filled} NaN written as 0" if result.nan_filled else ""
    click.echo(f"{result.rows} {result.mode} row(s) of {result.dimensions} values: {result.path}{filled}")


@export_group.command("joint")
@click.argument("catalogs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(),
              help="The GeoParquet to write (a directory with --partition-by).")
@click.option("--partition-by", multiple=True, type=click.Choice(["collection", "date", "utm_zone"]),
              help="Write a hive-partitioned dataset by these keys, in the order given (repeatable).")
@click.option("--row-group-rows", type=int, help="Rows per row group (default: about 64 MiB of rows).")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.pass_context
def export_joint_command(ctx: click.Context, catalogs: tuple[str, ...], output: str, partition_by: tuple[str, ...],
                         row_group_rows: int | None, verbose: int) -> None:
    """Write every chip of CATALOGS into one Hilbert-ordered GeoParquet, native CRS kept per chip."""
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, False)
    from .exports import export_joint

    result = export_joint(list(catalogs), output, partition_by=partition_by or None, row_group_rows=row_group_rows)
    click.echo(f"{result.rows} chips in {result.files} file(s) ({len(result.native_crs)} native CRS): {result.path}")


@main.command("change")
@click.argument("catalog")
@click.option("--before", required=True,
              help="The earlier items: item ids (comma-separated), or a datetime or interval (2024-06, 2024-06-01/..).")
@click.option("--after", required=True, help="The later items, as --before.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory (may be the embeddings' own --out): a collection of change maps is added to it.")
@click.option("--output-collection", help="Id of the output collection (default: change).")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
@click.pass_context
def change_command(ctx: click.Context, catalog: str, before: str, after: str, out: str, output_collection: str | None,
                   verbose: int, quiet: bool) -> None:
    """Map the change between two dates' embeddings of the same places (cosine distance per chip).

    Items of --before and --after are paired by chip grid (same CRS, transform and shape); each
    pair gives a float32 COG of 1 - cos(before, after) per chip, NaN where either has no chip.
    """
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, quiet)
    from .analysis.change import change_catalog

    result = change_catalog(catalog, before=before, after=after, out=out, output_collection=output_collection,
                            progress=_progress(quiet))
    if not quiet:
        click.echo(f"{len(result.items)} change map(s): {', '.join(result.items)}; catalog: {result.catalog}")


@main.command("similar")
@click.argument("catalog")
@click.option("--point", "points", multiple=True, metavar="LON,LAT",
              help="Query: the chip under this point (repeatable; every positive is averaged).")
@click.option("--chip", "chips", multiple=True, metavar="ITEM:ROW:COL",
              help="Query: the chip at chip_row ROW, chip_col COL of embedding item ITEM (repeatable).")
@click.option("--geometry", "geometries", multiple=True, metavar="GEOJSON",
              help="Query: the mean of the chips a GeoJSON geometry covers, a file or inline JSON (repeatable).")
@click.option("--negative", "negatives", multiple=True, metavar="QUERY",
              help="Subtracted from the query: LON,LAT, ITEM:ROW:COL or GeoJSON (repeatable).")
@click.option("--k", "k", type=int, default=10, show_default=True, help="Number of chips to return.")
@click.option("--bbox", metavar="W,S,E,N", help="Search only chips whose footprint meets this lon/lat box.")
@click.option("--datetime", "datetime_", metavar="DATETIME",
              help="Search only chips whose datetime is in this RFC 3339 instant or interval (2024-06, 2024/..).")
@click.option("--collection", "collections", multiple=True,
              help="Search (and take query chips) only in these embedding collections (repeatable or comma-separated).")
@click.option("--exact", is_flag=True, help="Score every chip, even where a collection has an index.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the results as GeoParquet (.parquet), GeoJSON (.geojson) or CSV (.csv) instead of a table.")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.pass_context
def similar_command(ctx: click.Context, catalog: str, points: tuple[str, ...], chips: tuple[str, ...],
                    geometries: tuple[str, ...], negatives: tuple[str, ...], k: int, bbox: str | None,
                    datetime_: str | None, collections: tuple[str, ...], exact: bool, output: str | None,
                    verbose: int) -> None:
    """The --k chips of CATALOG most similar (cosine) to a query, best first.

    CATALOG is an embeddings catalog stacembed wrote (directory, catalog.json, collection.json or
    item; local or http(s)). The query is the mean of its positives (--point, --chip, --geometry)
    minus the mean of its --negative ones. A collection with an index (`stacembed index`) is
    searched there, others (and stale indexes) chip by chip.
    """
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, False)
    from .analysis.similar import Query, format_table, output_format, search_metadata, similar, write_results

    if output:
        output_format(output)  # an unknown suffix fails before the search
    query = Query.combine(positive=[*(Query.parse(p, "point") for p in points),
                                    *(Query.parse(c, "chip") for c in chips),
                                    *(Query.from_geometry(g) for g in geometries)],
                          negative=negatives)
    names = tuple(name.strip() for value in collections for name in value.split(",") if name.strip())
    table = similar(catalog, query, k, bbox=bbox, datetime=datetime_, collections=names, exact=exact)
    info = search_metadata(table)
    methods = ", ".join(f"{name}: {how}" for name, how in info["search"].items())
    negative = f" minus {', '.join(info['negative'])}" if info["negative"] else ""
    shown = info["positive"][:3] + ([f"... ({len(info['positive'])} chips)"] if len(info["positive"]) > 3 else [])
    click.echo(f"query {', '.join(shown) or query.describe()}{negative}; {info['chips_searched']} chips searched "
               f"({methods})", err=True)
    if output:
        write_results(table, output)
        click.echo(f"wrote {table.num_rows} chips to {output}", err=True)
    else:
        click.echo(format_table(table))


@main.command("index")
@click.argument("catalog")
@click.option("--collection", "collections", multiple=True,
              help="Index only these embedding collections (repeatable, or comma-separated).")
@click.option("--force", is_flag=True, help="Rebuild even an index that is up to date.")
@click.option("--check", is_flag=True, help="Then measure the recall@k of the index against exact search.")
@click.option("--queries", type=int, default=100, show_default=True, help="Chips drawn at random as --check queries.")
@click.option("--k", "k", type=int, default=10, show_default=True, help="The k of --check's recall@k.")
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.pass_context
def index_command(ctx: click.Context, catalog: str, collections: tuple[str, ...], force: bool, check: bool,
                  queries: int, k: int, verbose: int) -> None:
    """Build the nearest-neighbour index (FAISS HNSW) of each embeddings collection of CATALOG.

    Written next to each collection.json (index-*.faiss and its chips, index-*.parquet) and
    registered as collection assets; `stacembed similar` then searches it. An index whose items
    changed is stale: `similar` scans instead, and this rebuilds it.
    """
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, False)
    from .analysis.index import build_index, check_index
    from .errors import ConfigError

    if queries < 1 or k < 1:
        raise ConfigError("--queries and --k must be positive")
    names = tuple(name.strip() for value in collections for name in value.split(",") if name.strip())
    for report in build_index(catalog, collections=names, force=force):
        if report.built:
            click.echo(f"{report.collection}: indexed {report.chips} chips in {report.seconds:.1f} s -> "
                       f"{report.index} ({_human_size(report.size)})")
        else:
            click.echo(f"{report.collection}: index up to date ({report.chips} chips, {report.index})")
    if check:
        for name, recall in check_index(catalog, queries=queries, k=k, collections=names).items():
            click.echo(f"{name}: recall@{k} {recall:.3f} against exact search ({queries} queries at most)")


@main.command("explore")
@click.argument("catalog")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port to listen on; 0: any free port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the server has no authentication, so keep it on loopback.")
@click.option("--no-browser", is_flag=True, help="Do not open the page in a web browser.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: every request); -v also shows tracebacks.")
@click.pass_context
def explore_command(ctx: click.Context, catalog: str, port: int, host: str, no_browser: bool, verbose: int) -> None:
    """Serve a map page of CATALOG's embeddings on a local web server, and open it (works offline).

    Each item's quicklook is drawn at its bbox; a click on the map lists and outlines the chips
    most like the one under the point (`stacembed similar --point`). Ctrl-C stops.
    """
    ctx.meta["stacembed.verbose"] = verbose > 0
    _setup_logging(verbose, False)
    from .web.server import serve

    serve(catalog, host, port, open_browser=not no_browser, echo=lambda text: click.echo(text, err=True))
