cwlVersion: v1.2
class: CommandLineTool
id: stacembed-train
label: stacembed train
doc: >-
  Trains a light head (knn, linear probe, mlp; a decoder for segmentation) on the chip embeddings
  of an embeddings catalog and labels (a raster, a vector file or a STAC label catalog, in any
  CRS), brought onto the chips with the method recorded. The head is validated on held-out places
  (whole spatial blocks of chips, or whole items) against the same head on the chips' band means
  (the baseline). The output is a model directory: head.safetensors, head.json, its STAC MLM card
  head.card.json, metrics.json, confusion.png and the held-out predictions (validation.parquet),
  the model that stacembed-predict and stacembed-embed-predict take. The embeddings are only read.

$namespaces:
  s: https://schema.org/
s:softwareVersion: 0.1.0
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0

baseCommand: [stacembed, train]
arguments:
  - prefix: --embeddings
    valueFrom: $(inputs.embeddings.path)
  - prefix: --out
    valueFrom: $(runtime.outdir)/model
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
    outdirMin: 256
  # A STAC label catalog may keep remote asset hrefs.
  NetworkAccess:
    networkAccess: true
  # HOME is the output directory under CWL: keep every cache (matplotlib draws the confusion
  # matrix) out of the staged-out model.
  EnvVarRequirement:
    envDef:
      XDG_CACHE_HOME: $(runtime.tmpdir)/cache
      TORCHINDUCTOR_CACHE_DIR: $(runtime.tmpdir)/torchinductor
      MPLCONFIGDIR: $(runtime.tmpdir)/matplotlib
      PYTHONDONTWRITEBYTECODE: "1"

inputs:
  embeddings:
    type: Directory
    doc: >-
      An embeddings catalog stacembed wrote (the results of the stacembed application package),
      with catalog.json at its top.
  labels:
    type: File?
    doc: >-
      Labels in one file: a raster (GeoTIFF/COG; band 1, its nodata respected) or a vector file
      (GeoJSON, GeoParquet, GeoPackage) with label_column. Give labels or labels_dir.
    inputBinding:
      prefix: --labels
  labels_dir:
    type: Directory?
    doc: >-
      A staged-in STAC catalog of label items (label extension; the asset with role labels, its
      href relative to the item or remote). Give labels or labels_dir.
    inputBinding:
      prefix: --labels
      valueFrom: $(self.path)/$(inputs.labels_href)
  labels_href:
    type: string
    default: catalog.json
    doc: >-
      With labels_dir - the document to read, relative to labels_dir - its catalog (default
      catalog.json), a collection or one label item.
  label_column:
    type: string?
    doc: The vector file's column of labels (default for STAC - label:properties).
    inputBinding:
      prefix: --label-column
  task:
    type:
      - "null"
      - type: enum
        symbols: [classification, regression, segmentation]
    doc: What the head learns (default classification).
    inputBinding:
      prefix: --task
  head:
    type:
      - "null"
      - type: enum
        symbols: [knn, linear, mlp, decoder]
    doc: >-
      knn (k nearest chips), linear (a probe; the default) or mlp (one hidden layer); decoder for
      segmentation (the default there).
    inputBinding:
      prefix: --head
  label_scale:
    type: int?
    doc: Segmentation - label pixels per patch side (default - the patch's size in source pixels).
    inputBinding:
      prefix: --label-scale
  min_label_fraction:
    type: float?
    doc: Leave out chips whose footprint labels cover less than this share (default 0.5).
    inputBinding:
      prefix: --min-label-fraction
  split:
    type:
      - "null"
      - type: enum
        symbols: [blocks, items]
    doc: Hold out whole spatial blocks of chips (the default), or whole items.
    inputBinding:
      prefix: --split
  block_size:
    type: int?
    doc: Side of a spatial block, in chips (default 8).
    inputBinding:
      prefix: --block-size
  folds:
    type: int?
    doc: Cross-validate over this many folds of blocks (or items) instead of one split.
    inputBinding:
      prefix: --folds
  validation_fraction:
    type: float?
    doc: Share of the chips held out in one split (default 0.2).
    inputBinding:
      prefix: --validation-fraction
  balance:
    type:
      - "null"
      - type: enum
        symbols: [weights, sampling, none]
    doc: Skewed classes - inverse-frequency loss weights (the default), balanced sampling, or nothing.
    inputBinding:
      prefix: --balance
  seed:
    type: int?
    doc: The seed of the split and of training (default 0) - the same seed, the same head.
    inputBinding:
      prefix: --seed
  epochs:
    type: int?
    doc: Training epochs (linear, mlp; default 50).
    inputBinding:
      prefix: --epochs
  lr:
    type: float?
    doc: Learning rate (default 3e-3).
    inputBinding:
      prefix: --lr
  no_baseline:
    type: boolean
    default: false
    doc: Do not train the same head on the chips' band means.
    inputBinding:
      prefix: --no-baseline

outputs:
  model:
    type: Directory
    doc: >-
      The model directory - head.safetensors, head.json, head.card.json (its STAC MLM card),
      metrics.json, confusion.png, validation.parquet - with relative hrefs from the card.
    outputBinding:
      glob: model
