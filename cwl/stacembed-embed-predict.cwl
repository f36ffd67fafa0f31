cwlVersion: v1.2
class: Workflow
id: stacembed-embed-predict
label: stacembed - embeddings of a STAC catalog, and a trained head's predictions
doc: >-
  Embeds the items of a staged-in STAC catalog with a backbone model described by a STAC MLM
  card (the embed step of the stacembed application package), then predicts every chip with a
  head of stacembed train (stacembed-predict), and stages out one self-contained STAC catalog
  holding the embeddings collection, the collection of predictions (class maps or values on each
  item's chip grid, and a table of every chip) and the head the predictions were made with. The
  head must have been trained on embeddings of the same backbone and chip layout.

$namespaces:
  s: https://schema.org/
s:name: stacembed-embed-predict
s:softwareVersion: 0.1.0
s:description: >-
  STAC items in, embeddings and a trained head's predictions out, as one STAC catalog.
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0
s:keywords: [STAC, embeddings, earth observation, machine learning, MLM, classification, GeoParquet, COG]

inputs:
  stac_catalog:
    type: Directory
    label: STAC catalog
    doc: >-
      A staged-in STAC catalog: a directory with catalog.json at its top, items with local asset
      hrefs relative to each item, or remote hrefs (read over the network).
  head:
    type: Directory
    label: Head
    doc: >-
      A model directory of stacembed train (the model output of stacembed-train) - head.card.json
      and the files it names.
  collection:
    type: string?
    label: Collection
    doc: >-
      Embed only the items of this collection (matched on the items' collection field).
      Default - every item in the catalog.
  model:
    type: string?
    label: Model
    doc: >-
      A built-in model card name (stacembed models list) or the http(s) URL of a STAC MLM item:
      the backbone the head was trained on. Ignored when model_dir is given. Default -
      stacembed-demo-landsat.
  model_dir:
    type: Directory?
    label: Model directory
    doc: >-
      A directory holding a STAC MLM card named model.json and the weights it names (its
      mlm:model asset, by an href relative to the card).
  chip_size:
    type: int?
    label: Chip size
    doc: Chip size in pixels (the head's training chips'). Default - the model's input size.
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
  probabilities:
    type: boolean
    label: Probabilities
    doc: Also write the class probabilities (a float32 COG, a band per class).
    default: false
  output_collection:
    type: string?
    label: Output collection
    doc: Id of the collection of predictions (default predictions-<head id>).

outputs:
  results:
    type: Directory
    label: Embeddings and predictions catalog
    doc: >-
      A self-contained STAC catalog (catalog.json at its top, relative hrefs) - the embeddings
      collection, the collection of predictions and the head (in head/) their links name.
    outputSource: predict/results

steps:
  embed:
    run: stacembed.cwl#stacembed-run
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
  predict:
    run: stacembed-predict.cwl
    in:
      embeddings: embed/results
      model: head
      probabilities: probabilities
      output_collection: output_collection
    out: [results]
