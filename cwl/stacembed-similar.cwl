cwlVersion: v1.2
class: CommandLineTool
id: stacembed-similar
label: stacembed similar
doc: >-
  Finds the k chips of an embeddings catalog most similar (cosine) to a query, best first, and
  writes them (rank, similarity, chip id, item, collection, source item, chip row and column,
  datetime, footprint) as GeoParquet, GeoJSON or CSV. The query is the mean of its positives
  (point, chip, geometry, geometry_file) minus the mean of its negatives; give at least one
  positive. A collection with an up-to-date index (stacembed index) is searched there, the
  others chip by chip. The catalog is only read.

$namespaces:
  s: https://schema.org/
s:softwareVersion: 0.1.0
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0

baseCommand: [stacembed, similar]
arguments:
  - prefix: --output
    valueFrom: results.$(inputs.format)
hints:
  DockerRequirement:
    dockerPull: ghcr.io/stacembed/stacembed:0.1.0
requirements:
  ResourceRequirement:
    coresMin: 1
    ramMin: 2048
  # HOME is the output directory under CWL: keep every cache out of the staged-out results.
  EnvVarRequirement:
    envDef:
      XDG_CACHE_HOME: $(runtime.tmpdir)/cache
      PYTHONDONTWRITEBYTECODE: "1"

inputs:
  embeddings:
    type: Directory
    doc: >-
      An embeddings catalog stacembed wrote (the results of the stacembed application package),
      with catalog.json at its top.
    inputBinding:
      position: 1
  point:
    type:
      - "null"
      - type: array
        items: string
        inputBinding:
          prefix: --point
    doc: Query - the chip under each LON,LAT (WGS84 degrees).
  chip:
    type:
      - "null"
      - type: array
        items: string
        inputBinding:
          prefix: --chip
    doc: Query - the chip at chip_row ROW, chip_col COL of embedding item ITEM, each as ITEM:ROW:COL.
  geometry:
    type:
      - "null"
      - type: array
        items: string
        inputBinding:
          prefix: --geometry
    doc: Query - the mean of the chips each GeoJSON geometry (inline JSON, WGS84) covers.
  geometry_file:
    type:
      - "null"
      - type: array
        items: File
        inputBinding:
          prefix: --geometry
    doc: Query - as geometry, from GeoJSON files.
  negative:
    type:
      - "null"
      - type: array
        items: string
        inputBinding:
          prefix: --negative
    doc: Subtracted from the query - each a LON,LAT, an ITEM:ROW:COL or an inline GeoJSON geometry.
  k:
    type: int
    default: 10
    doc: Number of chips to return.
    inputBinding:
      prefix: --k
  bbox:
    type: string?
    doc: West,south,east,north in WGS84 degrees; searches only chips whose footprint meets it.
    inputBinding:
      prefix: --bbox
  datetime:
    type: string?
    doc: An RFC 3339 datetime or interval (2024-06, 2024/..); searches only chips whose datetime is in it.
    inputBinding:
      prefix: --datetime
  collection:
    type: string?
    doc: Embedding collection id(s), comma-separated; searches (and takes query chips) only in these.
    inputBinding:
      prefix: --collection
  exact:
    type: boolean
    default: false
    doc: Score every chip, even where a collection has an index.
    inputBinding:
      prefix: --exact
  format:
    type:
      type: enum
      symbols: [geoparquet, geojson, csv]
    doc: The output format; the file is results.<format>.
    default: geoparquet

outputs:
  results:
    type: File
    doc: The k chips found, best first (rank 1 is the most similar).
    outputBinding:
      glob: results.$(inputs.format)
