cwlVersion: v1.2
class: CommandLineTool
id: stacembed-search
label: stacembed search
doc: >-
  Finds the STAC items a `stacembed run` would embed, without running anything, and writes them as
  an ItemCollection (json), ndjson or stac-geoparquet file that `stacembed run --items` reads back.
  The source is one of stac_catalog (a staged catalog directory), catalog (a catalog URL or a preset
  name), api (a STAC API root) or items (an items file); none searches the bundled sample catalog.

$namespaces:
  s: https://schema.org/
s:softwareVersion: 0.1.0
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0

baseCommand: [stacembed, search]
arguments:
  - prefix: --output
    valueFrom: items.$(inputs.format)
hints:
  DockerRequirement:
    dockerPull: ghcr.io/stacembed/stacembed:0.1.0
requirements:
  ResourceRequirement:
    coresMin: 1
    ramMin: 1024
  NetworkAccess:
    networkAccess: true
  EnvVarRequirement:
    envDef:
      XDG_CACHE_HOME: $(runtime.tmpdir)/cache
      STACEMBED_HEADERS: $(inputs.headers)
      PYTHONDONTWRITEBYTECODE: "1"

inputs:
  stac_catalog:
    type: Directory?
    doc: A staged STAC catalog directory with catalog.json at its top.
    inputBinding:
      prefix: --catalog
      valueFrom: $(self.path)/catalog.json
  catalog:
    type: string?
    doc: A static catalog.json / collection.json URL, or a preset name (stacembed presets).
    inputBinding:
      prefix: --catalog
  api:
    type: string?
    doc: A STAC API root URL.
    inputBinding:
      prefix: --api
  items:
    type: File?
    doc: An items file (ItemCollection JSON, ndjson or stac-geoparquet).
    inputBinding:
      prefix: --items
  collection:
    type: string?
    doc: Collection id(s), comma-separated.
    inputBinding:
      prefix: --collection
  bbox:
    type: string?
    doc: West,south,east,north in WGS84 degrees.
    inputBinding:
      prefix: --bbox
  datetime:
    type: string?
    doc: An RFC 3339 datetime or interval.
    inputBinding:
      prefix: --datetime
  ids:
    type: string?
    doc: Comma-separated item ids.
    inputBinding:
      prefix: --ids
  query:
    type: string?
    doc: Query extension JSON.
    inputBinding:
      prefix: --query
  filter:
    type: string?
    doc: A CQL2 filter, text or JSON.
    inputBinding:
      prefix: --filter
  sortby:
    type: string?
    doc: Sort fields, e.g. -eo:cloud_cover,+datetime.
    inputBinding:
      prefix: --sortby
  max_items:
    type: int?
    doc: Stop after this many items.
    inputBinding:
      prefix: --max-items
  headers:
    type: string
    default: ""
    doc: >-
      HTTP headers for the API and asset reads, one KEY=VALUE per line (e.g. Authorization=Bearer
      ...). Passed in the environment (STACEMBED_HEADERS), so they never appear on the command line.
  format:
    type:
      type: enum
      symbols: [json, ndjson, geoparquet]
    doc: The output format; the file is items.<format>.
    default: json
    inputBinding:
      prefix: --format

outputs:
  items_file:
    type: File
    doc: The items found.
    outputBinding:
      glob: items.$(inputs.format)

