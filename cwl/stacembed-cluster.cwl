cwlVersion: v1.2
class: CommandLineTool
id: stacembed-cluster
label: stacembed cluster
doc: >-
  Clusters the chip embeddings of an embeddings catalog (streamed mini-batch k-means, seeded)
  and publishes class maps as STAC: per embedding item, a uint8 class map COG on its chip grid
  (with a colour table; 255 where no chip was kept) and the cluster of every chip as GeoParquet,
  in a new collection (clusters-k<K>) that also holds the centroids, so that centroids or
  centroids_dir label another catalog of the same model with the same clusters. The embeddings
  catalog is copied into the output and the collection added to it: the output catalog lists
  both, and the class maps' derived_from links resolve within it.

$namespaces:
  s: https://schema.org/
s:softwareVersion: 0.1.0
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0

baseCommand: [stacembed, cluster]
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
    coresMax: 4
    ramMin: 2048
    tmpdirMin: 1024
    outdirMin: 1024
  # The embeddings catalog, copied to where the class maps are added (stacembed cluster --out
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
      An embeddings catalog stacembed wrote with GeoParquet embeddings (the results of the
      stacembed application package), with catalog.json at its top.
  k:
    type: int?
    doc: Number of clusters, 1-255. Required unless centroids or centroids_dir is given.
    inputBinding:
      prefix: --k
  seed:
    type: int?
    doc: The k-means seed - the same seed, the same clusters (default 0).
    inputBinding:
      prefix: --seed
  centroids:
    type: File?
    doc: >-
      The centroids.parquet of an earlier stacembed cluster: label with its clusters instead of
      fitting. Give centroids or centroids_dir, not both.
    inputBinding:
      prefix: --apply
  centroids_dir:
    type: Directory?
    doc: >-
      The output of an earlier stacembed-cluster (a catalog holding one cluster collection):
      label with its clusters instead of fitting.
    inputBinding:
      prefix: --apply
  batch_rows:
    type: int?
    doc: Vectors read and fitted at a time (default 4096).
    inputBinding:
      prefix: --batch-rows
  output_collection:
    type: string?
    doc: Id of the output collection (default clusters-k<K>); it must not be in the embeddings catalog already.
    inputBinding:
      prefix: --output-collection

outputs:
  results:
    type: Directory
    doc: >-
      A self-contained STAC catalog (catalog.json at its top, relative hrefs) - the embeddings
      catalog plus the collection of class maps.
    outputBinding:
      glob: results
