"""Growing and shrinking an index in place (`SepsRetriever.add_images` / `remove_images` / `compact` on a loaded
index, `transformers_seps.index_updates`), and surviving a kill at any point of an update."""

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_seps import SepsModel
from transformers_seps.index import MANIFEST_FILE, StoredGallery
from transformers_seps.retrieval import SepsRetriever

QUERIES = ["a red circle", "two blue squares on the left", "a green star", "a small yellow line"]


def gallery(count: int, seed: int = 5) -> tuple[list[Image.Image], list[str]]:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(count)]
    dense = [" ".join(["a picture with shapes"] + ["and colours"] * (i % 4)) for i in range(count)]
    return images, dense


IMAGES, DENSE = gallery(9)
IDS = [f"img-{i}" for i in range(9)]


def in_memory(model, processor, keep: list[int], shortlist_size: int | None = None) -> SepsRetriever:
    """The retriever holding the images of `keep`, built in memory: what an updated index must search like."""
    retriever = SepsRetriever(model, processor, shortlist_size=shortlist_size)
    retriever.add_images([IMAGES[i] for i in keep], [DENSE[i] for i in keep], [IDS[i] for i in keep])
    return retriever


def saved(model, processor, directory: Path, keep: list[int], dtype=torch.float32) -> Path:
    in_memory(model, processor, keep).save(directory, dtype=dtype, shard_size=3)
    return directory


def best_ids(retriever: SepsRetriever, top_k: int = 4) -> list[list]:
    result = retriever.search(QUERIES, top_k=top_k)
    return [[retriever.image_ids[i] for i in row] for row in result.indices.tolist()], result.scores


def assert_searches_like(loaded: SepsRetriever, expected: SepsRetriever) -> None:
    for shortlist_size in (None, 3):
        loaded.shortlist_size = expected.shortlist_size = shortlist_size
        ids, scores = best_ids(loaded)
        expected_ids, expected_scores = best_ids(expected)
        assert ids == expected_ids
        torch.testing.assert_close(scores, expected_scores)


def test_images_added_to_a_loaded_index_are_searched_and_saved(model_and_processor, tmp_path):
    model, processor = model_and_processor
    directory = saved(model, processor, tmp_path / "index", list(range(5)))
    loaded = SepsRetriever.load(directory, model)
    loaded.add_images(IMAGES[5:], DENSE[5:], IDS[5:])
    assert len(loaded) == 9 and loaded.image_ids == IDS
    assert_searches_like(loaded, in_memory(model, processor, list(range(9))))
    # On disk: one more shard, written by the update; a fresh load sees the images.
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert [entry["num_images"] for entry in manifest["shards"]] == [3, 2, 4] and manifest["generation"] == 1
    assert sorted(p.name for p in directory.glob("first_stage*")) == ["first_stage-g1.faiss"]
    assert_searches_like(SepsRetriever.load(directory, model), in_memory(model, processor, list(range(9))))


def test_an_addition_that_cannot_be_made_leaves_the_index_as_it_was(model_and_processor, tmp_path):
    model, processor = model_and_processor
    directory = saved(model, processor, tmp_path / "index", list(range(5)))
    before = sorted(p.name for p in directory.iterdir()), (directory / MANIFEST_FILE).read_bytes()
    loaded = SepsRetriever.load(directory, model)
    with pytest.raises(ValueError, match=r"already in the index: \['img-2'\]"):
        loaded.add_images(IMAGES[5:7], DENSE[5:7], ["img-5", "img-2"])
    with pytest.raises(ValueError, match="has dense captions"):
        loaded.add_images(IMAGES[5:7], image_ids=IDS[5:7])
    assert (sorted(p.name for p in directory.iterdir()), (directory / MANIFEST_FILE).read_bytes()) == before


def test_removed_images_are_never_returned_and_compaction_frees_their_disk(model_and_processor, tmp_path):
    model, processor = model_and_processor
    directory = saved(model, processor, tmp_path / "index", list(range(9)))
    disk = sum(p.stat().st_size for p in directory.glob("shard-*"))
    loaded = SepsRetriever.load(directory, model)
    loaded.remove_images(["img-1", "img-4", "img-5", "img-8"])  # a whole shard (3-5) keeps one image, 6-8 loses one
    kept = [0, 2, 3, 6, 7]
    assert len(loaded) == 5
    assert_searches_like(loaded, in_memory(model, processor, kept))
    assert loaded.search(QUERIES, top_k=9).indices.shape == (4, 5)  # top_k above the gallery: the 5 left
    with pytest.raises(KeyError, match="img-4"):
        loaded.remove_images(["img-4"])  # already removed
    with pytest.raises(KeyError, match="nowhere"):
        loaded.remove_images(["img-0", "nowhere"])
    assert len(SepsRetriever.load(directory, model)) == 5  # "img-0" was not removed with the unknown id
    loaded.compact()
    assert loaded.image_ids == [IDS[i] for i in kept]
    assert_searches_like(loaded, in_memory(model, processor, kept))
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["deleted_rows"] == [] and manifest["num_images"] == 5
    assert [entry["num_images"] for entry in manifest["shards"]] == [2, 1, 2]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [MANIFEST_FILE, "processor", manifest["first_stage_file"], *(e["file"] for e in manifest["shards"])]
    )
    assert sum(p.stat().st_size for p in directory.glob("shard-*")) < 0.7 * disk
    loaded.remove_images(IDS[:1])
    loaded.add_images(IMAGES[:1], DENSE[:1], IDS[:1])  # a removed id can come back
    assert len(loaded) == 5 and loaded.image_ids.count("img-0") == 2


def test_build_index_append_adds_the_images_of_a_folder_it_does_not_hold(saved_models, tmp_path):
    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "build_index.py"))["main"]
    folder = tmp_path / "photos"
    folder.mkdir()
    for number, image in enumerate(IMAGES[:4]):
        image.save(folder / f"p{number}.png")
    model_path = str(saved_models["paper"])
    arguments = ["--model", model_path, "--image_root", str(folder), "--dtype", "float32", "--shard_size", "2"]
    main([*arguments, "--output_dir", str(tmp_path / "index")])
    for number, image in enumerate(IMAGES[4:7], start=4):
        image.save(folder / f"p{number}.png")
    manifest = main([*arguments, "--output_dir", str(tmp_path / "index"), "--append"])
    assert [entry["num_images"] for entry in manifest["shards"]] == [2, 2, 2, 1]
    assert main([*arguments, "--output_dir", str(tmp_path / "index"), "--append"]) == manifest  # nothing new
    main([*arguments, "--output_dir", str(tmp_path / "whole")])  # the same 7 images, built at once
    model = SepsModel.from_pretrained(model_path)
    assert_searches_like(SepsRetriever.load(tmp_path / "index", model), SepsRetriever.load(tmp_path / "whole", model))


def test_compaction_copies_int8_codes_as_they_are(model_and_processor, tmp_path):
    model, processor = model_and_processor
    directory = saved(model, processor, tmp_path / "index", list(range(6)), dtype=torch.int8)
    before = StoredGallery(directory, model).rows(torch.tensor([0, 2, 3, 5]))
    loaded = SepsRetriever.load(directory, model)
    loaded.remove_images(["img-1", "img-4"])
    loaded.compact()
    after = StoredGallery(directory, model).rows(torch.arange(4))
    for old, new in zip(before, after, strict=True):
        assert torch.equal(old, new)


def test_removing_from_a_gallery_in_memory(model_and_processor):
    model, processor = model_and_processor
    retriever = in_memory(model, processor, list(range(9)))
    retriever.remove_images(["img-3", "img-0"])
    assert retriever.image_ids == [IDS[i] for i in (1, 2, 4, 5, 6, 7, 8)]
    assert_searches_like(retriever, in_memory(model, processor, [1, 2, 4, 5, 6, 7, 8]))
    with pytest.raises(KeyError, match="img-3"):
        retriever.remove_images(["img-3"])
    retriever.remove_images(retriever.image_ids)
    with pytest.raises(ValueError, match="empty"):
        retriever.search("a red circle")


# Runs an update in a fresh process that SIGKILLs itself just before the n-th os.replace or os.unlink the update
# makes (the renames that publish a file and the deletions of replaced ones), or runs it to the end for n = 0.
UPDATE_SCRIPT = """
import os, signal, sys
import numpy as np
from PIL import Image
from transformers_seps import SepsModel, SepsProcessor, SepsRetriever

directory, model_path, action, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
retriever = SepsRetriever.load(directory, SepsModel.from_pretrained(model_path))
rng = np.random.default_rng(11)
images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
calls = 0
def killing(real):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
os.replace, os.unlink = killing(os.replace), killing(os.unlink)
if action == "add":
    retriever.add_images(images, ["a new picture", "another new picture"], ["new-0", "new-1"])
elif action == "remove":
    retriever.remove_images(["img-1", "img-4"])
else:
    retriever.compact()
print("calls", calls)
"""


def state(directory: Path, model) -> tuple[int, list, list]:
    """What a search sees in an index: its size, its image ids and its ranking of every image for the queries."""
    retriever = SepsRetriever.load(directory, model)
    return len(retriever), list(retriever.image_ids), best_ids(retriever, top_k=len(retriever))[0]


@pytest.mark.slow
@pytest.mark.parametrize("action", ["add", "remove", "compact"])
def test_an_update_killed_at_any_point_leaves_the_index_as_before_or_as_after(model_and_processor, tmp_path, action):
    model, processor = model_and_processor
    model.save_pretrained(tmp_path / "model")
    directory = saved(model, processor, tmp_path / "index", list(range(6)))
    if action == "compact":
        SepsRetriever.load(directory, model).remove_images(["img-1", "img-4"])
    pristine = tmp_path / "pristine"
    shutil.copytree(directory, pristine)

    def restore() -> None:
        shutil.rmtree(directory)
        shutil.copytree(pristine, directory)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def run(kill_at: int) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", UPDATE_SCRIPT, str(directory), str(tmp_path / "model"), action, str(kill_at)]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    finished = run(0)
    assert finished.returncode == 0, finished.stderr[-3000:]
    calls = int(finished.stdout.split()[-1])
    assert calls >= 1  # at least the manifest
    after = state(directory, model)
    restore()
    before = state(directory, model)
    assert before != after
    outcomes = []
    for kill_at in range(1, calls + 1):
        killed = run(kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        now = state(directory, model)
        assert now in (before, after), f"killed at call {kill_at} of {calls}: the index is neither before nor after"
        outcomes.append("after" if now == after else "before")
        if now == after:  # the update took effect: the next update cleans what the kill left
            SepsRetriever.load(directory, model).remove_images([])
            assert state(directory, model) == after
        restore()
    # Killed before its first rename the update has not happened; it has once the manifest is replaced.
    assert outcomes[0] == "before" and outcomes == sorted(outcomes, key=["before", "after"].index)
