"""Device choice on this CPU-only machine: an unavailable GPU is a clear, fixable error."""

import pytest
import torch

from stacembed.embed import select_device
from stacembed.errors import ConfigError, StacembedError

cpu_only = pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="needs a machine without GPU",
)


@cpu_only
def test_auto_and_cpu_give_the_cpu():
    assert select_device("auto") == torch.device("cpu")
    assert select_device() == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")


@cpu_only
@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_an_unavailable_accelerator_is_a_config_error_that_says_what_to_do(name):
    with pytest.raises(StacembedError) as caught:
        select_device(name)
    assert isinstance(caught.value, ConfigError)
    message = str(caught.value)
    assert message.startswith(f"--device {name}: ") and ("not available" in message or "no CUDA device" in message)
    assert "--device cpu" in message and "auto" in message


def test_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="--device must be one of auto, cpu, cuda, mps; got 'tpu'"):
        select_device("tpu")


@cpu_only
def test_device_cuda_through_the_cli_is_one_line_and_writes_nothing(synthetic_catalog, cli, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(20, 20))
    out = tmp_path / "out"
    result = cli("run", "--catalog", catalog, "--out", out, "--device", "cuda")  # raises if not a StacembedError
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stacembed: error: --device cuda: no CUDA device"), result.output
    assert not out.exists()
