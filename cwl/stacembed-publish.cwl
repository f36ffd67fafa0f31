cwlVersion: v1.2
class: CommandLineTool
id: stacembed-publish
label: stacembed publish
doc: >-
  Creates or updates a stacembed run's collection and items on a STAC API with the Transactions
  extension (idempotent), rewriting relative asset and link hrefs under asset_base_href, the URL
  where the results directory's files were uploaded.

$namespaces:
  s: https://schema.org/
s:softwareVersion: 0.1.0
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0

baseCommand: [stacembed, publish]
stdout: publish.log
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
  results:
    type: Directory
    doc: A stacembed output directory (the results of the stacembed application package).
    inputBinding:
      position: 1
  api:
    type: string
    doc: The STAC API root URL.
    inputBinding:
      prefix: --api
  asset_base_href:
    type: string
    doc: The URL where the results directory's files are served.
    inputBinding:
      prefix: --asset-base-href
  headers:
    type: string
    default: ""
    doc: >-
      HTTP headers for the API and asset reads, one KEY=VALUE per line (e.g. Authorization=Bearer
      ...). Passed in the environment (STACEMBED_HEADERS), so they never appear on the command line.
  timeout:
    type: float?
    doc: Seconds to wait for each request (default 30).
    inputBinding:
      prefix: --timeout
  retries:
    type: int?
    doc: Retries with backoff (default 3).
    inputBinding:
      prefix: --retries

outputs:
  log:
    type: stdout
    doc: What was published (published N item(s) to API).
