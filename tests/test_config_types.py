"""Config values are typed strictly (issue 15, item 9): a wrong type is one ConfigError naming
the key, never a traceback later, a silent truncation (batch size 2.7 -> 2) or a string that
reads as true ("no" -> True); and comma-separated --collection works as the README says (item 10)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SAMPLE

from stacembed.config import _ALIASES, FORMATS, RunConfig, _kind
from stacembed.errors import ConfigError

FIELDS = [field.name for field in dataclasses.fields(RunConfig)]
# The flag a user writes for a field, where it is not the field's own name (--collection).
FLAGS = {field: alias for alias, field in _ALIASES.items()}
# Wrong values for each kind of field (what ``config._kind`` says a field takes).
BAD = {
    "bool": ["maybe", 1, 0, "2", 1.0, ["true"]],
    "int": [2.7, "2.7", 2.0, True, "two", "", [2]],
    "float": ["fast", True, [1.0], "nan", float("inf")],
    "str": [123, 1.5, True, ["a"], {"a": 1}],
    "path": [123, ["out"]],
    "strings": [123, ["a", 1], {"a": 1}],
    "pairs": [123, ["A=B", 1], {"A": ["list"]}, {1: "x"}],
    "json": [123, ["a"]],
    "bbox": [True, {"w": 1}, [1, 2, "x", 4]],
    "datetime": [123, ["2024"]],
    "sortby": [123, {"field": "x"}],
    "layer": [2.7, True, ["a"], ""],
}


def bad_values(name: str) -> list:
    return BAD.get(_kind(name), [])


def flag(name: str) -> str:
    return "--" + FLAGS.get(name, name).replace("_", "-")


def test_every_field_has_a_known_kind_and_wrong_values_to_try():
    """A field added to RunConfig is typed strictly: its annotation, or ``config._KINDS``, says what it takes."""
    assert [name for name in FIELDS if not bad_values(name)] == []
    kinds = {name: _kind(name) for name in FIELDS}
    assert kinds["batch_size"] == "int" and kinds["offline"] == "bool" and kinds["model"] == "str"
    assert kinds["collections"] == "strings" and kinds["headers"] == "pairs" and kinds["query"] == "json"


@pytest.mark.parametrize("name,value", [(n, v) for n in FIELDS for v in bad_values(n)],
                         ids=lambda v: repr(v)[:20])
def test_a_wrong_type_is_a_config_error_naming_the_key(name, value):
    values = {"out": "out", name: value}
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_mapping(values)
    assert flag(name) in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text,expected", [
    ("true", True), ("false", False), ("yes", True), ("no", False), ("1", True), ("0", False),
    ("No", False), (" TRUE ", True), (True, True), (False, False),
])
def test_booleans_take_booleans_and_their_spellings_only(text, expected):
    bools = [name for name in FIELDS if _kind(name) == "bool"]
    assert {"offline", "compile", "dry_run", "progress", "aws_unsigned", "requester_pays"} <= set(bools)
    config = RunConfig.from_mapping({"out": "o", **{name: text for name in bools}})
    assert all(getattr(config, name) is expected for name in bools)


def test_numbers_and_strings_convert_exactly():
    config = RunConfig.from_mapping({"out": Path("o"), "chip_size": "32", "batch_size": 8, "min_valid": "0.25",
                                     "resolution": 30, "timeout": "7", "layer": "-2", "model": Path("card.json"),
                                     "crs": "EPSG:32725"})
    assert (config.chip_size, config.batch_size, config.layer) == (32, 8, -2)
    assert config.min_valid == 0.25 and type(config.resolution) is float and config.resolution == 30.0
    assert config.timeout == 7.0 and config.model == "card.json" and config.crs == "EPSG:32725"
    assert RunConfig.from_mapping({"out": "o", "layer": "blocks.3"}).layer == "blocks.3"


def test_yaml_values_are_typed_strictly(tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text('out: out\noffline: "no"\ncompile: "false"\ndry-run: "yes"\n')
    config = RunConfig.from_yaml(run_file)
    assert (config.offline, config.compile, config.dry_run) == (False, False, True)
    for text, key in [("model: 123", "--model"), ("batch-size: 2.7", "--batch-size"),
                      ("chip-size: '64.0'", "--chip-size"), ("offline: 'nope'", "--offline"),
                      ("collection: [a, 1]", "--collection"), ("weights: [a]", "--weights")]:
        run_file.write_text(f"out: out\n{text}\n")
        with pytest.raises(ConfigError, match=key):
            RunConfig.from_yaml(run_file)


def test_yaml_keys_must_be_option_names(tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text("out: out\n123: x\n")
    with pytest.raises(ConfigError, match="123"):
        RunConfig.from_yaml(run_file)
    run_file.write_text("out: out\ncollection: a\ncollections: b\n")
    with pytest.raises(ConfigError, match="collection"):
        RunConfig.from_yaml(run_file)


def test_a_wrong_type_in_a_config_file_is_one_line_from_the_cli(tmp_path):
    from stacembed.cli import main

    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"out: {tmp_path / 'out'}\nmodel: 123\n")
    result = CliRunner().invoke(main, ["run", "--config", str(run_file)])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("stacembed: error: --model") and "Traceback" not in result.output


def test_flags_override_config_file_keys_of_either_spelling(tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text("out: out\ncollection: a\nformat: geotiff\n")
    config = RunConfig.from_yaml(run_file, {"collections": ("b",)})
    assert config.collections == ("b",) and config.formats == ("geotiff",)


# --- item 10: --collection a,b ------------------------------------------------------------------


def test_collections_split_on_commas_in_every_form():
    for value in ("a,b", ["a,b"], ("a", "b"), ("a, b", ""), " a ,b,", ("a,b", "a")):
        assert RunConfig.from_mapping({"collection": value}, need_out=False).collections == ("a", "b"), value
    assert RunConfig.from_mapping({"ids": ("x,y", "z")}, need_out=False).ids == ("x", "y", "z")


def test_comma_separated_collections_on_the_command_line(tmp_path):
    from stacembed.cli import main

    runner = CliRunner()
    collection = "landsat-etm-sample"
    result = runner.invoke(main, ["run", "--catalog", str(SAMPLE), "--collection", f"{collection},{collection}",
                                  "--out", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "4 items" in result.output
    result = runner.invoke(main, ["run", "--catalog", str(SAMPLE), "--collection", f"{collection},nope",
                                  "--out", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 1
    assert "collection 'nope' not found" in result.stderr and "," not in result.stderr.split("'")[1]


# --- item 16: --pooling none defaults to GeoTIFF --------------------------------------------------


def test_pooling_none_defaults_to_geotiff_and_refuses_geoparquet_up_front():
    assert RunConfig(pooling="none").formats == ("geotiff",)
    assert RunConfig.from_mapping({"pooling": "none"}, need_out=False).formats == ("geotiff",)
    assert RunConfig().formats == FORMATS and RunConfig(pooling="mean").formats == FORMATS
    for formats in (("geoparquet",), FORMATS):
        with pytest.raises(ConfigError, match="GeoTIFF only"):
            RunConfig(pooling="none", formats=formats)
    with pytest.raises(ConfigError, match="at least one --format"):
        RunConfig(formats=())


def test_pooling_none_without_format_on_the_command_line(tmp_path):
    from test_embedding_modes import ITEM, vit_card

    from stacembed.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "--catalog", str(SAMPLE), "--ids", ITEM, "--model", vit_card(tmp_path),
                                       "--pooling", "none", "--min-valid", "0", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    embeddings = [p.name for p in out.glob(f"*/{ITEM}/{ITEM}.*") if ".thumbnail." not in p.name
                  and ".overview." not in p.name]  # the quicklooks aside
    assert sorted(embeddings) == [f"{ITEM}.json", f"{ITEM}.tif"]
