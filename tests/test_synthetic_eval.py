"""The synthetic benchmark's measures beyond recall (`transformers_seps.train.synthetic_eval`), on hand-made scenes
and selections whose answers are known."""

import math

import numpy as np
import pytest

from transformers_seps.train.data.synthetic import Scene, SceneObject, named_objects
from transformers_seps.train.synthetic_eval import caption_coverage, patch_coverage, selection_grounding


def scene_object(shape: str, color: str, row: int, col: int, radius: float = 0.1) -> SceneObject:
    center = ((col + 0.5) / 3, (row + 0.5) / 3)
    return SceneObject(shape, color, "large", row, col, center, radius, (0, 0, 0))


SCENE = Scene(
    (
        scene_object("circle", "red", 0, 0),
        scene_object("square", "blue", 0, 2),
        scene_object("star", "green", 2, 1),
    ),
    "plain",
    (240, 240, 240),
)


def test_a_caption_names_the_objects_that_fit_its_mentions():
    assert named_objects("a red circle at the top left", SCENE) == [SCENE.objects[0]]
    assert named_objects("a large green star and a blue square", SCENE) == [SCENE.objects[2], SCENE.objects[1]]
    assert named_objects("a small red circle and a blue square", SCENE) == [SCENE.objects[1]]  # the size is wrong
    with pytest.raises(ValueError, match="grammar"):
        named_objects("a cat on a mat", SCENE)


def test_patch_coverage_adds_up_to_the_object_area():
    side = 8
    coverage = patch_coverage([SCENE.objects[0]], side)
    assert coverage.shape == (side * side,) and coverage.min() >= 0 and coverage.max() <= 1
    assert coverage.sum() == pytest.approx(math.pi * 0.1**2 * side * side, rel=0.02)  # a disk of radius 0.1
    # Row-major: the top-left circle lies in the first rows and columns only.
    assert coverage.reshape(side, side)[4:].sum() == 0 and coverage.reshape(side, side)[:, 4:].sum() == 0


def test_grounding_of_hand_made_selections():
    named, others = caption_coverage("a red circle at the top left", SCENE, 8)
    on_named, on_others = named > 0, others > 0
    count = int(on_named.sum())
    # Keeps exactly the named object's patches, then as many others as patches on the other objects, then none.
    exact = on_named.astype(float)
    everything = (on_named | on_others).astype(float)
    blind = (~on_named & ~on_others).astype(float)
    blind[np.flatnonzero(blind)[count:]] = 0
    keep = np.stack([exact, everything, blind])
    captions = ["a red circle at the top left"] * 3
    result = {
        name: selection_grounding(keep[i : i + 1], named[None], others[None], captions[:1])["all"]
        for i, name in enumerate(("exact", "everything", "blind"))
    }
    assert result["exact"]["recall"] == pytest.approx(1) and result["exact"]["other_recall"] == 0
    assert result["exact"]["precision"] == pytest.approx(result["exact"]["best_precision"])
    assert result["everything"]["recall"] == pytest.approx(1) == result["everything"]["other_recall"]
    assert result["everything"]["precision"] < result["everything"]["best_precision"]
    assert result["blind"]["recall"] == 0 == result["blind"]["precision"]
    assert result["exact"]["random_recall"] == pytest.approx(count / 64)
    assert result["exact"]["random_precision"] == pytest.approx(named.mean())
    by_template = selection_grounding(keep, np.stack([named] * 3), np.stack([others] * 3), captions)
    assert by_template["position"]["recall"] == pytest.approx(by_template["all"]["recall"])
    assert set(by_template) == {"all", "position"}  # no pair or relation caption here
