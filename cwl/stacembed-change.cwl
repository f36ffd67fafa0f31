cwlVersion: v1.2
class: CommandLineTool
id: stacembed-change
label: stacembed change
doc: >-
  Maps the change between two dates' embeddings of the same places: the before and after items
  are paired by chip grid (the same CRS, transform and shape), and each pair gives a float32 COG
  of the cosine distance 1 - cos(before, after) per chip (0 no change, 2 opposite; NaN where
  either date has no chip), published as a STAC item spanning both dates in a new collection
  (change). The embeddings catalog is copied into the output and the collection added to it:
  the output catalog lists both, and the change maps' derived_from links resolve within it.

$namespaces:
  s: https://schema.org/
s:softwareVersion: 0.1.0
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0

baseCommand: [stacembed, change]
arguments:
  - position: 1
    valueFrom: $(runtime.outdir)/results
  - prefix: --out
    valueFrom: $(runtime.outdir)/results
  - --quiet
hints:
  DockerRequirement:
    dockerPull: ghcr.io/stacembed/stacembed:0.1.0
requirements:
  ResourceRequirement:
    coresMin: 1
    ramMin: 2048
    tmpdirMin: 1024
    outdirMin: 1024
  # The embeddings catalog, copied to where the change maps are added (stacembed change --out
  # may be the embeddings' own output directory).
  InitialWorkDirRequirement:
    listing:
      - entry: $(inputs.embeddings)
        entryname: results
        writable: true
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
      with catalog.json at its top, holding the items of both dates.
  before:
    type: string
    doc: >-
      The earlier items - item ids (comma-separated), or an RFC 3339 datetime or interval
      (2024-06, 2024-06-01/..) their times overlap.
    inputBinding:
      prefix: --before
  after:
    type: string
    doc: The later items, as before.
    inputBinding:
      prefix: --after
  output_collection:
    type: string?
    doc: Id of the output collection (default change); it must not be in the embeddings catalog already.
    inputBinding:
      prefix: --output-collection

outputs:
  results:
    type: Directory
    doc: >-
      A self-contained STAC catalog (catalog.json at its top, relative hrefs) - the embeddings
      catalog plus the collection of change maps.
    outputBinding:
      glob: results
