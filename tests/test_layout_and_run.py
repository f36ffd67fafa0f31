"""The output tree's owner (paths, links, atomic writes, resume) and a run's frozen parameters."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from stacembed import RunConfig
from stacembed.embed import Embedder
from stacembed.errors import OutputError
from stacembed.job import Inputs, Run
from stacembed.layout import OutputLayout, atomic_path, is_temporary, temporary_path, write_json
from stacembed.models import resolve_card


def test_atomic_path_replaces_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1} and sorted(tmp_path.iterdir()) == [target]
    directory = tmp_path / "item"
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("x")
        assert is_temporary(tmp) and not directory.exists()
    assert (directory / "x").read_text() == "x" and not is_temporary(directory)


def test_the_layout_names_every_path_and_link_of_the_tree(tmp_path):
    layout = OutputLayout(tmp_path, "coll")
    odd = "S2A/tile:33?x"  # an id that is not a safe file name
    item_file = layout.item_file(odd)
    assert item_file.parent == layout.item_dir(odd) and item_file.parent.parent == layout.collection_dir
    assert "/" not in item_file.parent.name and item_file.name == f"{item_file.parent.name}.json"
    # every relative link resolves to the file the layout puts there
    assert (layout.collection_dir / layout.item_href(odd)).resolve() == item_file.resolve()
    assert (layout.root / layout.collection_href()).resolve() == layout.collection_file.resolve()
    assert (item_file.parent / layout.model_href("m 1")).resolve() == layout.model_card_file("m 1").resolve()
    assert (layout.collection_dir / layout.model_href("m 1", from_item=False)).resolve() == \
        layout.model_card_file("m 1").resolve()
    for rel, href in layout.ITEM_LINKS:
        target = (item_file.parent / href).resolve()
        assert target == (layout.catalog_file if rel == "root" else layout.collection_file).resolve()
    assert layout.asset_href(odd, "geotiff") == f"./{layout.asset_name(odd, 'geotiff')}"


def test_create_clears_temporaries_of_dead_processes_only(tmp_path):
    layout = OutputLayout(tmp_path / "out", "coll")
    assert layout.create() == [layout.collection_dir]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = layout.collection_dir / f".item-a.{int(dead.stdout)}.tmp"
    mine = temporary_path(layout.item_dir("item-b"))
    for directory in (stale, mine):
        directory.mkdir()
    assert layout.create() == []
    assert not stale.exists() and mine.exists()
    mine.rmdir()
    layout.remove_if_empty([layout.collection_dir])
    assert not layout.collection_dir.exists()


def test_an_item_finished_elsewhere_first_is_kept_and_other_parameters_refused(tmp_path):
    layout = OutputLayout(tmp_path, "coll")
    layout.create()
    parameters = {"mlm:name": "m", "chip_size": 32, "weights_sha256": "abc"}
    with layout.writing_item("it", parameters) as staging:
        write_json(staging.path / layout.item_file("it").name,
                   {"id": "it", "properties": {"emb:runtime_parameters": parameters}})
        # another worker renames its copy into place while this one is still writing
        os.mkdir(layout.item_dir("it"))
        write_json(layout.item_file("it"), {"id": "it", "properties": {"emb:runtime_parameters": parameters},
                                            "theirs": True})
    assert not staging.kept  # this one's work was thrown away: not counted as embedded
    assert layout.finished_item("it")["theirs"] and [d.name for d in layout.collection_dir.iterdir()] == ["it"]
    with pytest.raises(OutputError, match="other parameters"), layout.writing_item("it", {**parameters, "stride": 8}):
        pass  # the copy that stands was made differently: checked at the move too
    assert layout.resumable("it", parameters) and not layout.resumable("other", parameters)
    with pytest.raises(OutputError, match=r"other parameters \(chip_size, weights\)"):
        layout.resumable("it", {**parameters, "chip_size": 64, "weights_sha256": "def"})
    assert [item["id"] for item in layout.finished_items()] == ["it"]


def test_run_parameters_are_resolved_once_and_frozen(tmp_path):
    config = RunConfig(out=tmp_path, weights="random", formats=("geoparquet",), progress=False)
    inputs = Inputs.resolve(config)
    card = inputs.card
    assert inputs.chip_size == card.input_size[0] == card.chip_size(None) and inputs.stride == inputs.chip_size
    embedder, weights = inputs.load_embedder(device="cpu", streams=1)
    assert embedder.input_shape == (len(card.bands), inputs.chip_size, inputs.chip_size)
    run = Run.freeze(inputs, embedder, weights)
    assert run.batch_size == 16 and list(run.layouts.values()) == [OutputLayout(tmp_path, inputs.collection_ids[0])]
    assert run.provenance.parameters["chip_size"] == inputs.chip_size
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.batch_size = 32


def test_the_auto_batch_size_probes_the_runs_own_chip_shape(monkeypatch):
    """On CUDA the batch size is what half the free memory holds for chips of the run's shape
    (not the card's input size); the same logic, with the device's memory calls stubbed."""
    card = resolve_card("stacembed-demo-landsat")
    embedder = Embedder.from_card(card, None, torch.device("cpu"), chip_size=32)
    probes = []

    def forward(pixels, context=None):
        probes.append(pixels.shape)
        return torch.zeros(len(pixels), embedder.dimensions)

    per_chip = 3 * 2**20
    monkeypatch.setattr(embedder, "device", torch.device("cuda"))
    monkeypatch.setattr(embedder, "_forward", forward)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 10 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 10 * 2**20 + 4 * per_chip)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (600 * 2**20, 2**34))
    assert embedder.auto_batch_size() == 600 * 2**20 // 2 // per_chip
    assert probes == [(4, len(card.bands), 32, 32)]
    assert np.prod(probes[0][1:]) != np.prod((len(card.bands), *card.input_size))  # the card says 64 px
