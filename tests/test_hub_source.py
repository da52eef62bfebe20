"""model.source as a Hub repo id (org/name), resolved offline from a huggingface_hub cache the test lays out."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compress.recipe import load_recipe
from compress.run import main
from tests.conftest import TINY_TRAINING, save_tiny_model, write_recipe


def lay_out_hub_cache(cache: Path, repo_id: str, checkpoint: Path, ref: str = "main") -> Path:
    """huggingface_hub's cache layout: models--org--name/ with blobs/<sha256> (the files), refs/<ref> (a commit
    hash) and snapshots/<commit>/<file>, a relative link to its blob. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{ref}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for folder in (repo / "blobs", repo / "refs", snapshot):
        folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(checkpoint.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache that huggingface_hub reads in this process, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # org/name must not be a local folder by accident
    return cache


def test_a_recipe_naming_a_hub_repo_runs_offline_from_the_cache(tmp_path, tiny_bert, tiny_csv):
    """The whole command line, in a fresh process told where the cache is (HF_HUB_CACHE) and to stay offline."""
    cache = tmp_path / "hub"
    snapshot = lay_out_hub_cache(cache, "someorg/tiny-bert", tiny_bert)
    steps = [{"name": "teacher", "type": "finetune", **TINY_TRAINING}]
    recipe = write_recipe(tmp_path, "someorg/tiny-bert", tiny_csv, steps,
                          benchmark={"backends": ["torch-cpu"], "sequence_lengths": [16], "min_repeats": 5,
                                     "max_seconds": 0.2})
    env = os.environ | {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run([sys.executable, "-m", "compress.run", str(recipe), "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    teacher = tmp_path / "runs" / "tiny" / "00-teacher"
    assert (teacher / "model.safetensors").is_file()
    vocab = lambda folder: json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]  # noqa: E731
    assert vocab(teacher) == vocab(snapshot)
    assert "running finetune on source" in (tmp_path / "runs" / "tiny" / "run.log").read_text()


def test_revision_picks_the_ref_and_a_missing_repo_or_revision_is_exit_2_naming_it(tmp_path, offline_cache,
                                                                                   tiny_csv, capsys):
    main_snapshot = lay_out_hub_cache(offline_cache, "someorg/tiny", save_tiny_model(tmp_path / "a", seed=0))
    v1 = lay_out_hub_cache(offline_cache, "someorg/tiny", save_tiny_model(tmp_path / "b", seed=1), ref="v1")
    steps = [{"name": "onnx", "type": "export"}]
    recipe = write_recipe(tmp_path, "someorg/tiny", tiny_csv, steps)
    assert load_recipe(recipe).model.folder() == main_snapshot
    raw = recipe.read_text()
    recipe.write_text(raw.replace("model:\n", "model:\n  revision: v1\n"))
    assert load_recipe(recipe).model.folder() == v1

    recipe.write_text(raw.replace("model:\n", "model:\n  revision: v2\n"))
    assert main([str(recipe), "--out", str(tmp_path / "runs"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "model.source" in err and "'someorg/tiny'" in err and "revision 'v2'" in err and "HF_HUB_OFFLINE" in err

    recipe.write_text(raw.replace("someorg/tiny", "someorg/missing"))
    assert main([str(recipe), "--out", str(tmp_path / "runs"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "model.source" in err and "'someorg/missing' is not a local folder" in err
    assert not (tmp_path / "runs").exists()


def test_a_hub_repo_with_pickle_weights_needs_allow_pickle_and_revision_needs_a_hub_source(tmp_path, offline_cache,
                                                                                          tiny_bert, tiny_csv, capsys):
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in tiny_bert.iterdir():
        if f.name != "model.safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(tiny_bert / "model.safetensors"), pickled / "pytorch_model.bin")
    lay_out_hub_cache(offline_cache, "someorg/pickled", pickled)
    recipe = write_recipe(tmp_path, "someorg/pickled", tiny_csv, [{"name": "onnx", "type": "export"}])
    assert main([str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "model.source" in err and "pickle" in err and "allow_pickle: true" in err
    raw = recipe.read_text()
    recipe.write_text(raw.replace("model:\n", "model:\n  allow_pickle: true\n"))
    assert main([str(recipe), "--dry-run"]) == 0
    capsys.readouterr()

    local = write_recipe(tmp_path, tiny_bert, tiny_csv, [{"name": "onnx", "type": "export"}])
    local.write_text(local.read_text().replace("model:\n", "model:\n  revision: main\n"))
    assert main([str(local), "--dry-run"]) == 2
    assert "model.revision 'main' applies to a Hub repo id" in capsys.readouterr().err
