cwlVersion: v1.2
class: CommandLineTool
id: stacembed-models-describe
label: stacembed models describe
doc: >-
  Describes a model card as JSON (bands, input size, embedding size, value scaling, weights):
  a built-in card name or URL (model), or the model.json of a model directory (model_dir); one of the two.

$namespaces:
  s: https://schema.org/
s:softwareVersion: 0.1.0
s:codeRepository: https://github.com/stacembed/stacembed
s:license: https://spdx.org/licenses/Apache-2.0

baseCommand: [stacembed, models, describe]
stdout: model.json
hints:
  DockerRequirement:
    dockerPull: ghcr.io/stacembed/stacembed:0.1.0
requirements:
  ResourceRequirement:
    coresMin: 1
    ramMin: 512
  NetworkAccess:
    networkAccess: true
  EnvVarRequirement:
    envDef:
      PYTHONDONTWRITEBYTECODE: "1"

inputs:
  model:
    type: string?
    doc: A built-in card name (stacembed models list) or the URL of an MLM card.
    inputBinding:
      position: 1
  model_dir:
    type: Directory?
    doc: A directory holding an MLM card named model.json. Give model or model_dir, not both.
    inputBinding:
      position: 2
      valueFrom: $(self.path)/model.json

outputs:
  description:
    type: stdout
    doc: The card's description as JSON.
