cwlVersion: v1.2
class: CommandLineTool
id: stacembed-models-list
label: stacembed models list
doc: Lists the built-in model cards (name, architecture, bands, embedding size), tab-separated.

$namespaces:
  s: https://schema.org/
s:softwareVersion: 0.1.0
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0

baseCommand: [stacembed, models, list]
stdout: models.tsv
hints:
  DockerRequirement:
    dockerPull: ghcr.io/stacembed/stacembed:0.1.0
requirements:
  ResourceRequirement:
    coresMin: 1
    ramMin: 512
  EnvVarRequirement:
    envDef:
      PYTHONDONTWRITEBYTECODE: "1"

inputs: []

outputs:
  models:
    type: stdout
    doc: One line per built-in card - name, architecture, number of bands, embedding size.
