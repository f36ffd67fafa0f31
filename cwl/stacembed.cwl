cwlVersion: v1.2

# OGC EO Application Package (OGC 20-089) for stacembed: STAC items in, embeddings out.
#   stacembed          main Workflow: one staged-in STAC catalog -> one STAC catalog of embeddings
#   stacembed-scatter  Workflow: several staged-in catalogs, embedded in parallel, then merged
#   stacembed-run      CommandLineTool: `stacembed run` on a staged catalog
#   stacembed-merge    CommandLineTool: merge stacembed result catalogs into one
# Run locally:  cwltool cwl/stacembed.cwl#stacembed --stac_catalog catalogs/sample
# (see cwl/README.md; add --no-container to use the stacembed on PATH instead of the image).

$namespaces:
  s: https://schema.org/
s:name: stacembed
s:softwareVersion: 0.1.0
s:description: >-
  STAC items in, embeddings out, as STAC items: stacks each item on its own pixel grid, runs a
  backbone model described by a STAC MLM card over chips, and publishes the embeddings as a STAC
  catalog with GeoParquet and Cloud-Optimized GeoTIFF assets.
s:author:
  - class: s:Organization
    s:name: stacembed developers
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0
s:keywords: [STAC, embeddings, earth observation, machine learning, MLM, GeoParquet, COG]
s:dateCreated: "2026-11-28"

$graph:
  - class: Workflow
    id: stacembed
    label: stacembed - embeddings of a STAC catalog
    doc: >-
      Embeds the items of a staged-in STAC catalog with a backbone model described by a STAC MLM
      card and stages out a self-contained STAC catalog of the embeddings: one item per source item
      with a GeoParquet asset (one row per chip, with its footprint) and a COG asset (one pixel per
      chip, one band per embedding dimension), the model's provenance and derived_from links.
    inputs:
      stac_catalog:
        type: Directory
        label: STAC catalog
        doc: >-
          A staged-in STAC catalog: a directory with catalog.json at its top, items with local
          asset hrefs relative to each item, or remote hrefs (read over the network).
      collection:
        type: string?
        label: Collection
        doc: >-
          Embed only the items of this collection (matched on the items' collection field, so it
          also works on stage-in catalogs that link items without a collection document).
          Default: every item in the catalog.
      model:
        type: string?
        label: Model
        doc: >-
          A built-in model card name (stacembed models list) or the http(s) URL of a STAC MLM
          item. Ignored when model_dir is given. Default: stacembed-demo-landsat.
      model_dir:
        type: Directory?
        label: Model directory
        doc: >-
          A directory holding a STAC MLM card named model.json and the weights it names (its
          mlm:model asset, by an href relative to the card).
      chip_size:
        type: int?
        label: Chip size
        doc: Chip size in pixels. Default - the model's input size.
      stride:
        type: int?
        label: Stride
        doc: Step between chips in pixels. Default - the chip size.
      formats:
        type: string[]
        label: Output formats
        doc: geoparquet, geotiff, or both (the first is the items' embeddings asset).
        default: [geoparquet, geotiff]
      bbox:
        type: string?
        label: Bounding box
        doc: West,south,east,north in WGS84 degrees; keeps the items that intersect it.
      datetime:
        type: string?
        label: Date and time
        doc: An RFC 3339 datetime or interval (2024-06-01/2024-08-31, 2024-06/..); keeps the items in it.
      max_items:
        type: int?
        label: Maximum items
        doc: Embed at most this many of the matching items.
    outputs:
      results:
        type: Directory
        label: Embeddings catalog
        doc: A self-contained STAC catalog (catalog.json at its top) of the embeddings, with relative hrefs.
        outputSource: embed/results
    steps:
      embed:
        run: "#stacembed-run"
        in:
          stac_catalog: stac_catalog
          collection: collection
          model: model
          model_dir: model_dir
          chip_size: chip_size
          stride: stride
          formats: formats
          bbox: bbox
          datetime: datetime
          max_items: max_items
        out: [results]

  - class: Workflow
    id: stacembed-scatter
    label: stacembed - embeddings of several STAC catalogs, merged
    doc: >-
      Embeds several staged-in STAC catalogs in parallel with the same model and parameters, then
      merges the results into one self-contained STAC catalog: collections with the same id (the
      same source collection and model) become one collection holding the items of every catalog.
    requirements:
      ScatterFeatureRequirement: {}
    inputs:
      stac_catalogs:
        type: Directory[]
        label: STAC catalogs
        doc: Staged-in STAC catalogs, each a directory with catalog.json at its top.
      collection:
        type: string?
        label: Collection
        doc: Embed only the items of this collection (matched on the items' collection field). Default - every item.
      model:
        type: string?
        label: Model
        doc: A built-in model card name or the http(s) URL of a STAC MLM item. Ignored when model_dir is given.
      model_dir:
        type: Directory?
        label: Model directory
        doc: A directory holding a STAC MLM card named model.json and the weights it names.
      chip_size:
        type: int?
        label: Chip size
        doc: Chip size in pixels. Default - the model's input size.
      stride:
        type: int?
        label: Stride
        doc: Step between chips in pixels. Default - the chip size.
      formats:
        type: string[]
        label: Output formats
        doc: geoparquet, geotiff, or both (the first is the items' embeddings asset).
        default: [geoparquet, geotiff]
      bbox:
        type: string?
        label: Bounding box
        doc: West,south,east,north in WGS84 degrees; keeps the items that intersect it.
      datetime:
        type: string?
        label: Date and time
        doc: An RFC 3339 datetime or interval; keeps the items in it.
      max_items:
        type: int?
        label: Maximum items
        doc: Embed at most this many of the matching items of each catalog.
    outputs:
      results:
        type: Directory
        label: Embeddings catalog
        doc: One self-contained STAC catalog (catalog.json at its top) of the embeddings of every input catalog.
        outputSource: merge/results
    steps:
      embed:
        run: "#stacembed-run"
        scatter: stac_catalog
        in:
          stac_catalog: stac_catalogs
          collection: collection
          model: model
          model_dir: model_dir
          chip_size: chip_size
          stride: stride
          formats: formats
          bbox: bbox
          datetime: datetime
          max_items: max_items
        out: [results]
      merge:
        run: "#stacembed-merge"
        in:
          catalogs: embed/results
        out: [results]

  - class: CommandLineTool
    id: stacembed-run
    label: stacembed run
    doc: >-
      `stacembed run` on a staged-in STAC catalog, writing the output catalog into the working
      directory. Model weights are never downloaded into the results: every cache points at the
      job's temporary directory.
    baseCommand: [stacembed, run]
    arguments:
      - prefix: --catalog
        valueFrom: $(inputs.stac_catalog.path)/catalog.json
      - prefix: --out
        valueFrom: $(runtime.outdir)
      - --quiet
    hints:
      DockerRequirement:
        dockerPull: ghcr.io/stacembed/stacembed:0.1.0
    requirements:
      ResourceRequirement:
        coresMin: 1
        coresMax: 4
        ramMin: 4096
        tmpdirMin: 1024
        outdirMin: 1024
      # Catalogs may keep remote asset hrefs, and model cards may name weights by URL.
      NetworkAccess:
        networkAccess: true
      # HOME is the output directory under CWL: keep every cache out of the staged-out results.
      EnvVarRequirement:
        envDef:
          STACEMBED_CACHE: $(runtime.tmpdir)/stacembed-cache
          XDG_CACHE_HOME: $(runtime.tmpdir)/cache
          TORCH_HOME: $(runtime.tmpdir)/torch
          HF_HOME: $(runtime.tmpdir)/huggingface
          TORCHINDUCTOR_CACHE_DIR: $(runtime.tmpdir)/torchinductor
          MPLCONFIGDIR: $(runtime.tmpdir)/matplotlib
          PYTHONDONTWRITEBYTECODE: "1"
    inputs:
      stac_catalog:
        type: Directory
        doc: A STAC catalog directory with catalog.json at its top.
      collection:
        type: string?
        doc: >-
          Keep the items of this collection (its Collection document, or the items' collection
          field in stage-in catalogs that link items straight from catalog.json).
        inputBinding:
          prefix: --collection
      model:
        type: string?
        doc: A built-in model card name or a path or URL of an MLM card.
        inputBinding:
          prefix: --model
          position: 1
      model_dir:
        type: Directory?
        doc: A directory with model.json (an MLM card) and its weights; takes precedence over model.
        inputBinding:
          prefix: --model
          position: 2
          valueFrom: $(self.path)/model.json
      chip_size:
        type: int?
        inputBinding:
          prefix: --chip-size
      stride:
        type: int?
        inputBinding:
          prefix: --stride
      formats:
        # Not optional: ogc-ap-validator 0.5 crashes on optional array inputs.
        type:
          type: array
          items: string
          inputBinding:
            prefix: --format
        default: [geoparquet, geotiff]
      bbox:
        type: string?
        inputBinding:
          prefix: --bbox
      datetime:
        type: string?
        inputBinding:
          prefix: --datetime
      max_items:
        type: int?
        inputBinding:
          prefix: --max-items
    outputs:
      results:
        type: Directory
        outputBinding:
          glob: .

  - class: CommandLineTool
    id: stacembed-merge
    label: merge stacembed catalogs
    doc: >-
      Merges stacembed result catalogs into one catalog in the working directory. Collections with
      the same id are joined (their item links, extents, source links and stac-geoparquet mirror);
      an item already present (the same source item in two catalogs) is kept once. Collections
      that differ in embedding type, dimensions, chip layout or model cannot share an id and fail.
    baseCommand: [python3]
    arguments:
      - $(inputs.script.path)
      - $(runtime.outdir)
    hints:
      DockerRequirement:
        dockerPull: ghcr.io/stacembed/stacembed:0.1.0
    requirements:
      ResourceRequirement:
        coresMin: 1
        ramMin: 1024
      EnvVarRequirement:
        envDef:
          PYTHONDONTWRITEBYTECODE: "1"
    inputs:
      catalogs:
        type: Directory[]
        doc: stacembed result directories, each with catalog.json at its top.
        inputBinding:
          position: 1
      script:
        type: File
        doc: The merge program (python3 with stac-geoparquet, as in the stacembed image).
        default:
          class: File
          basename: stacembed_merge.py
          contents: |
            """Merge stacembed result catalogs: python3 stacembed_merge.py OUT CATALOG_DIR..."""
            import json
            import shutil
            import sys
            from pathlib import Path

            COMPATIBLE = ("emb:type", "emb:dimensions", "data_type", "emb:chip_layout")


            def load(path):
                return json.loads(Path(path).read_text())


            def dump(path, data):
                Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


            def fail(message):
                sys.exit("stacembed-merge: error: " + message)


            def links(doc, rel):
                return [link for link in doc.get("links", []) if link.get("rel") == rel]


            def copy_tree(src, dst):
                shutil.copytree(src, dst, symlinks=False, copy_function=shutil.copyfile)


            def union_extent(a, b):
                box_a, box_b = a["spatial"]["bbox"][0], b["spatial"]["bbox"][0]
                box = [min(box_a[0], box_b[0]), min(box_a[1], box_b[1]),
                       max(box_a[2], box_b[2]), max(box_a[3], box_b[3])]
                (start_a, end_a), (start_b, end_b) = a["temporal"]["interval"][0], b["temporal"]["interval"][0]
                starts = [t for t in (start_a, start_b) if t]
                ends = [t for t in (end_a, end_b) if t]
                start = min(starts) if len(starts) == 2 else None  # an open end stays open
                end = max(ends) if len(ends) == 2 else None
                return {"spatial": {"bbox": [box]}, "temporal": {"interval": [[start, end]]}}


            def join(target, source_dir, incoming):
                """Add the items of collection ``incoming`` (in ``source_dir``) to the one in ``target``."""
                existing = load(target / "collection.json")
                for key in COMPATIBLE:
                    if existing.get(key) != incoming.get(key):
                        fail(f"collection {incoming['id']!r} differs in {key} between catalogs; not merged")
                model_a = [link["href"] for link in links(existing, "emb:model")]
                model_b = [link["href"] for link in links(incoming, "emb:model")]
                if model_a != model_b:
                    fail(f"collection {incoming['id']!r} was made with different models; not merged")
                known = {link["href"] for link in links(existing, "item")}
                for link in links(incoming, "item"):
                    item_dir = (source_dir / link["href"]).parent
                    dest = target / item_dir.relative_to(source_dir)
                    if link["href"] in known or dest.exists():
                        print(f"stacembed-merge: item {item_dir.name} is in several catalogs; kept once",
                              file=sys.stderr)
                        continue
                    copy_tree(item_dir, dest)
                    existing["links"].append(link)
                    known.add(link["href"])
                for model in (source_dir / "model").glob("*.json"):
                    if not (target / "model" / model.name).exists():
                        (target / "model").mkdir(exist_ok=True)
                        shutil.copyfile(model, target / "model" / model.name)
                sources = {link["href"] for link in links(existing, "emb:source-data")}
                existing["links"] += [link for link in links(incoming, "emb:source-data") if link["href"] not in sources]
                existing["extent"] = union_extent(existing["extent"], incoming["extent"])
                items = [link for link in existing["links"] if link.get("rel") == "item"]
                others = [link for link in existing["links"] if link.get("rel") != "item"]
                existing["links"] = others + sorted(items, key=lambda link: link["href"])
                mirror(target, existing)
                dump(target / "collection.json", existing)


            def mirror(target, collection):
                """Rewrite the collection's stac-geoparquet mirror from its items."""
                asset = next((k for k, a in collection.get("assets", {}).items()
                              if "collection-mirror" in a.get("roles", [])), None)
                if asset is None:
                    return
                path = target / collection["assets"][asset]["href"]
                items = [load(target / link["href"]) for link in links(collection, "item")]
                try:
                    import stac_geoparquet.arrow
                except ImportError:
                    print("stacembed-merge: stac-geoparquet is missing; the items mirror is dropped", file=sys.stderr)
                    path.unlink(missing_ok=True)
                    del collection["assets"][asset]
                    return
                records = [{**item, "collection": collection["id"]} for item in items]
                path.unlink(missing_ok=True)
                table = stac_geoparquet.arrow.parse_stac_items_to_arrow(records)
                stac_geoparquet.arrow.to_parquet(table, path)


            def main(out, sources):
                children = {}
                for source in sources:
                    catalog = load(source / "catalog.json")
                    for link in links(catalog, "child"):
                        coll_file = source / link["href"]
                        coll_dir = coll_file.parent
                        name = coll_dir.relative_to(source).as_posix()
                        if coll_file.name != "collection.json" or "/" in name or name in ("", "."):
                            fail(f"{source}: child {link['href']!r} is not a stacembed collection directory")
                        collection = load(coll_file)
                        if collection["id"] in children:
                            join(out / children[collection["id"]], coll_dir, collection)
                        elif (out / name).exists():
                            fail(f"two collections with different ids both live in {name}/")
                        else:
                            copy_tree(coll_dir, out / name)
                            children[collection["id"]] = name
                if not children:
                    fail("no collections in " + ", ".join(map(str, sources)))
                catalog = {
                    "type": "Catalog", "stac_version": "1.0.0", "id": "stacembed-output",
                    "description": f"Embeddings made by stacembed, merged from {len(sources)} catalogs.",
                    "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
                    + [{"rel": "child", "href": f"./{name}/collection.json", "type": "application/json"}
                       for name in sorted(children.values())],
                }
                dump(out / "catalog.json", catalog)
                print(f"stacembed-merge: {len(children)} collection(s) from {len(sources)} catalogs")


            if __name__ == "__main__":
                main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
    outputs:
      results:
        type: Directory
        outputBinding:
          glob: .
