cwlVersion: v1.2
class: CommandLineTool
id: stacembed-predict
label: stacembed predict
doc: >-
  Predicts every chip of an embeddings catalog with a head of stacembed train and publishes the
  maps as STAC: per embedding item, a class map COG on its chip grid (uint8 with a colour table,
  255 where no chip was kept; float32 values for regression; at label resolution for a
  segmentation decoder), optionally the class probabilities, and the prediction of every chip as
  GeoParquet, in a new collection (predictions-<head id>). The embeddings catalog is copied into
  the output and the collection added to it, and the model directory is copied into the output
  too (head_dir): the output catalog lists both collections, and the maps' derived_from links -
  to the embeddings and to the head's card - resolve within it.

$namespaces:
  s: https://schema.org/
s:softwareVersion: 0.1.0
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0

baseCommand: [stacembed, predict]
arguments:
  - prefix: --embeddings
    valueFrom: $(runtime.outdir)/results
  - prefix: --model
    valueFrom: $(runtime.outdir)/results/$(inputs.head_dir)
  - prefix: --out
    valueFrom: $(runtime.outdir)/results
  - --quiet
hints:
  DockerRequirement:
    dockerPull: ghcr.io/stacembed/stacembed:0.1.0
requirements:
  ResourceRequirement:
    coresMin: 1
    coresMax: 4
    ramMin: 2048
    tmpdirMin: 1024
    outdirMin: 1024
  # The embeddings catalog, copied to where the maps are added (stacembed predict --out may be
  # the embeddings' own output directory), and the head copied into it, so that the maps'
  # derived_from links to its card resolve in the staged-out results, not in a staging area.
  InitialWorkDirRequirement:
    listing:
      - entry: $(inputs.embeddings)
        entryname: results
        writable: true
      - entry: $(inputs.model)
        entryname: results/$(inputs.head_dir)
        writable: true
  # HOME is the output directory under CWL: keep every cache out of the staged-out results.
  EnvVarRequirement:
    envDef:
      XDG_CACHE_HOME: $(runtime.tmpdir)/cache
      TORCHINDUCTOR_CACHE_DIR: $(runtime.tmpdir)/torchinductor
      PYTHONDONTWRITEBYTECODE: "1"

inputs:
  embeddings:
    type: Directory
    doc: >-
      An embeddings catalog stacembed wrote (the results of the stacembed application package),
      with catalog.json at its top, made by the backbone the head was trained on.
  model:
    type: Directory
    doc: >-
      A model directory of stacembed train (the model output of stacembed-train) - head.card.json
      and the files it names.
  head_dir:
    type: string
    default: head
    doc: >-
      The name of the head's copy in the results (a directory next to catalog.json; default
      head). It must not be in the embeddings catalog already - give another when predicting
      on the output of an earlier stacembed-predict.
  probabilities:
    type: boolean
    default: false
    doc: Also write the class probabilities (a float32 COG, a band per class).
    inputBinding:
      prefix: --probabilities
  output_collection:
    type: string?
    doc: >-
      Id of the output collection (default predictions-<head id>); it must not be in the
      embeddings catalog already.
    inputBinding:
      prefix: --output-collection

outputs:
  results:
    type: Directory
    doc: >-
      A self-contained STAC catalog (catalog.json at its top, relative hrefs) - the embeddings
      catalog plus the collection of predictions, and the head (head_dir) their links name.
    outputBinding:
      glob: results
