from datetime import UTC, datetime
from pathlib import Path

import pytest

from stacembed.config import RunConfig, parse_bbox, parse_datetime
from stacembed.errors import ConfigError


def test_bbox_parses_and_validates():
    assert parse_bbox("-35,-8.1,-34.8,-7.9") == (-35.0, -8.1, -34.8, -7.9)
    for bad in ("1,2,3", "a,b,c,d", "10,0,5,1", "0,10,1,5", "0,-91,1,0"):
        with pytest.raises(ConfigError):
            parse_bbox(bad)


def test_datetime_intervals():
    utc = UTC
    assert parse_datetime("2024-06-01/2024-06-30") == (
        datetime(2024, 6, 1, tzinfo=utc), datetime(2024, 6, 30, 23, 59, 59, 999999, tzinfo=utc))
    assert parse_datetime("../2024-01-01T00:00:00Z") == (None, datetime(2024, 1, 1, tzinfo=utc))
    assert parse_datetime("2024/..")[0] == datetime(2024, 1, 1, tzinfo=utc)
    start, end = parse_datetime("2024-02")
    assert (start.day, end.month, end.day) == (1, 2, 29)
    for bad in ("yesterday", "2024-13-01", "2024-02-01/2024-01-01", ""):
        with pytest.raises(ConfigError):
            parse_datetime(bad)


def test_yaml_with_flag_overrides(tmp_path: Path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text("out: out\nchip-size: 32\nbatch_size: 4\nformats: [geotiff]\nbbox: [-35, -8.1, -34.8, -7.9]\n")
    config = RunConfig.from_yaml(run_file, {"batch_size": 8})
    assert config.chip_size == 32 and config.batch_size == 8
    assert config.formats == ("geotiff",) and config.out == Path("out")
    assert config.bbox == (-35.0, -8.1, -34.8, -7.9)


def test_bad_config_values():
    with pytest.raises(ConfigError, match="unknown configuration key"):
        RunConfig.from_mapping({"out": "x", "chipsize": 3})
    with pytest.raises(ConfigError, match="--out is required"):
        RunConfig.from_mapping({})
    with pytest.raises(ConfigError, match="min-valid"):
        RunConfig.from_mapping({"out": "x", "min_valid": 2})
    with pytest.raises(ConfigError, match="only one of --api, --catalog, --items"):
        RunConfig.from_mapping({"out": "x", "catalog": "a", "items": "b"})
    with pytest.raises(ConfigError, match="--format"):
        RunConfig.from_mapping({"out": "x", "formats": "png"})
