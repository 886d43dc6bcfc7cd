"""A synthetic fine-grained image-text retrieval benchmark, rendered with PIL, in the SEPS authors' data layout.

Each image is a 3x3 grid of cells on a light, plain or faintly textured background; 4 to 8 cells hold one object
with a shape (7), a color (10) and a size (2), and no two objects of an image share both shape and color. Each
image gets five short captions, each naming one or two of its objects:

    a small red circle at the top left          (an object and its position)
    a green star and an orange heart            (two objects)
    a large blue square above a yellow cross    (two objects and their relation)

and one dense caption (standing in for the multimodal LLM) that lists every object with its attributes and
position. A caption names at most two of the 4-8 objects, so most patches are irrelevant to it: patch selection
matters. The size word is dropped from a third of the object mentions, and a quarter of the images (by default)
are edited copies of the image before them (one or two objects recolored, reshaped, resized or moved): hard
negatives that share most attributes, so retrieval is learnable but not trivial.

Everything is deterministic by seed: the same configuration gives byte-identical files (for a given Pillow and
zlib), and image `i` of a split does not depend on the sizes of the other splits. The output folder is written
in a temporary folder and renamed into place when complete, so an interrupted run never leaves a half-written
benchmark; the marker `synthetic_info.json` records the configuration, and a later call with the same
configuration reuses the folder.

Layout of `output_dir` (the authors' files, plus the scene descriptions and the marker):

    id_mapping.json               {"<image id>": "<split>_<index>.png"}, ids 0.. over train, dev, test
    {split}_caps.txt              5 captions per image, image-major
    {split}_ids.txt               the image id of each caption line
    synthetic_{split}.jsonl       {"text": <dense caption>, "model_id": "seps-synthetic-v1",
                                  "metadata": {"length": <characters>}}, one per image
    {split}_scenes.jsonl          the scene of each image (objects with attributes, grid cell, geometry)
    images/{split}_{index}.png    image_size x image_size RGB
    synthetic_info.json           generator version and configuration (written last)

Read it with `load_retrieval_split(output_dir, "synthetic", split)`. Command line:

    python -m transformers_seps.train.data.synthetic --output_dir data/synthetic [--num_train 2000 --num_dev 200
        --num_test 200 --image_size 224 --seed 0 --overwrite]
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from transformers import HfArgumentParser

from .authors_layout import RetrievalFiles

logger = logging.getLogger(__name__)

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneObject",
    "SyntheticBenchmarkConfig",
    "benchmark_is_complete",
    "caption_holds",
    "caption_kind",
    "dense_caption",
    "edit_scene",
    "generate_synthetic_benchmark",
    "named_objects",
    "read_benchmark_info",
    "read_scenes",
    "render_object_mask",
    "render_scene",
    "sample_scene",
    "scene_captions",
]

DATASET_NAME = "synthetic"
SPLITS = ("train", "dev", "test")
INFO_FILE = "synthetic_info.json"
IMAGE_FOLDER = "images"
DENSE_MODEL_ID = "seps-synthetic-v1"
# Bump when the output for a given configuration changes: older folders are then not reused.
GENERATOR_VERSION = 1

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "heart")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 155, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 205, 30),
    "orange": (245, 135, 25),
    "purple": (130, 50, 170),
    "pink": (245, 125, 185),
    "brown": (125, 80, 40),
    "black": (25, 25, 25),
    "gray": (125, 125, 125),
}
SIZES = ("small", "large")
# Light background tones, never named in captions (so they never clash with object colors).
BACKGROUND_TONES = ((244, 244, 240), (236, 230, 216), (226, 234, 240), (232, 240, 228))
BACKGROUND_TEXTURES = ("plain", "striped", "dotted", "shaded")

GRID = 3
# Position phrase of each grid cell, by (row, col).
POSITIONS = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the center", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Object radius as a fraction of a grid cell, by size, and the margin kept to the cell border.
RADIUS_RANGE = {"small": (0.20, 0.24), "large": (0.38, 0.44)}
CELL_MARGIN = 0.03
COLOR_JITTER = 12
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-downsampled: anti-aliased edges

CAPTION_KINDS = ("position", "pair", "relation")
CAPTION_KIND_WEIGHTS = (0.3, 0.3, 0.4)
DROP_SIZE_PROBABILITY = 1 / 3
CAPTIONS_PER_IMAGE = 5


@dataclass(frozen=True)
class SyntheticBenchmarkConfig:
    """Parameters of the synthetic benchmark (also the command-line arguments)."""

    num_train: int = field(default=2000, metadata={"help": "Number of training images (5 captions each)."})
    num_dev: int = field(default=200, metadata={"help": "Number of validation images."})
    num_test: int = field(default=200, metadata={"help": "Number of test images."})
    image_size: int = field(default=224, metadata={"help": "Side of the square images, in pixels."})
    min_objects: int = field(default=4, metadata={"help": "Fewest objects in an image (at least 2)."})
    max_objects: int = field(default=8, metadata={"help": "Most objects in an image (at most 9, one per cell)."})
    hard_negative_rate: float = field(
        default=0.25, metadata={"help": "Fraction of images that are edited copies of the image before them."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed; the same seed gives byte-identical files."})

    def __post_init__(self) -> None:
        for name in ("num_train", "num_dev", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if self.image_size < 32:
            raise ValueError(f"`image_size` must be at least 32 pixels, got {self.image_size}.")
        if not 2 <= self.min_objects <= self.max_objects <= GRID * GRID:
            raise ValueError(
                f"need 2 <= min_objects <= max_objects <= {GRID * GRID}, got {self.min_objects} and {self.max_objects}."
            )
        if not 0.0 <= self.hard_negative_rate <= 1.0:
            raise ValueError(f"`hard_negative_rate` must be in [0, 1], got {self.hard_negative_rate}.")
        if self.seed < 0:
            raise ValueError(f"`seed` must be non-negative, got {self.seed}.")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "dev": self.num_dev, "test": self.num_test}


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    Attributes:
        shape, color, size (`str`): attributes, from `SHAPES`, `COLORS` and `SIZES`.
        row, col (`int`): its grid cell, 0-2 from the top and from the left.
        center (`tuple[float, float]`): (x, y) of its center, as fractions of the image side.
        radius (`float`): its radius, as a fraction of the image side.
        rgb (`tuple[int, int, int]`): its fill color (the named color, slightly jittered).
    """

    shape: str
    color: str
    size: str
    row: int
    col: int
    center: tuple[float, float]
    radius: float
    rgb: tuple[int, int, int]

    @property
    def position(self) -> str:
        return POSITIONS[self.row][self.col]


@dataclass(frozen=True)
class Scene:
    """Objects (in row-major cell order) on a background (`texture` from `BACKGROUND_TEXTURES`, `tone` RGB)."""

    objects: tuple[SceneObject, ...]
    texture: str
    tone: tuple[int, int, int]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """The inverse of `to_dict` (extra keys, such as a scene file's `image_id`, are ignored)."""
        objects = tuple(
            SceneObject(**{**obj, "center": tuple(obj["center"]), "rgb": tuple(obj["rgb"])}) for obj in data["objects"]
        )
        return cls(objects, data["texture"], tuple(data["tone"]))


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    # Rounded so that scene files hold short, exact numbers.
    return round(float(rng.uniform(low, high)), 4)


def _pick(rng: np.random.Generator, options: tuple | list):
    return options[int(rng.integers(len(options)))]


def _make_object(rng: np.random.Generator, shape: str, color: str, size: str, row: int, col: int) -> SceneObject:
    """Draws the geometry and color jitter of an object placed in cell (row, col)."""
    cell = 1.0 / GRID
    radius = _uniform(rng, *RADIUS_RANGE[size]) * cell
    slack = max(0.5 * cell - radius - CELL_MARGIN * cell, 0.0)
    center = (
        round((col + 0.5) * cell + _uniform(rng, -slack, slack), 4),
        round((row + 0.5) * cell + _uniform(rng, -slack, slack), 4),
    )
    jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
    rgb = tuple(int(np.clip(base + delta, 0, 255)) for base, delta in zip(COLORS[color], jitter, strict=True))
    return SceneObject(shape, color, size, row, col, center, round(radius, 4), rgb)


def _row_major(objects: list[SceneObject]) -> tuple[SceneObject, ...]:
    return tuple(sorted(objects, key=lambda obj: (obj.row, obj.col)))


def sample_scene(rng: np.random.Generator, min_objects: int = 4, max_objects: int = 8) -> Scene:
    """A random scene: `min_objects`-`max_objects` objects in distinct cells, with distinct (shape, color)."""
    num_objects = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(GRID * GRID, size=num_objects, replace=False)
    kinds = rng.choice(len(SHAPES) * len(COLORS), size=num_objects, replace=False)
    colors = list(COLORS)
    objects = [
        _make_object(
            rng,
            SHAPES[int(kind) // len(colors)],
            colors[int(kind) % len(colors)],
            _pick(rng, SIZES),
            int(cell) // GRID,
            int(cell) % GRID,
        )
        for cell, kind in zip(cells, kinds, strict=True)
    ]
    return Scene(_row_major(objects), _pick(rng, BACKGROUND_TEXTURES), _pick(rng, BACKGROUND_TONES))


def edit_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """A hard negative of `scene`: the same scene with one or two of its objects edited, each recolored,
    reshaped, resized or moved to a free cell. Objects keep distinct (shape, color)."""
    objects = list(scene.objects)
    num_edits = min(1 + int(rng.random() < 0.5), len(objects))
    for index in rng.choice(len(objects), size=num_edits, replace=False):
        obj = objects[int(index)]
        taken = {(other.shape, other.color) for other in objects if other is not obj}
        free_cells = sorted({(r, c) for r in range(GRID) for c in range(GRID)} - {(o.row, o.col) for o in objects})
        colors = [color for color in COLORS if color != obj.color and (obj.shape, color) not in taken]
        shapes = [shape for shape in SHAPES if shape != obj.shape and (shape, obj.color) not in taken]
        edits = ["size"] + ["color"] * bool(colors) + ["shape"] * bool(shapes) + ["move"] * bool(free_cells)
        edit = _pick(rng, edits)
        shape, color, size, row, col = obj.shape, obj.color, obj.size, obj.row, obj.col
        if edit == "color":
            color = _pick(rng, colors)
        elif edit == "shape":
            shape = _pick(rng, shapes)
        elif edit == "size":
            size = "small" if size == "large" else "large"
        else:
            row, col = _pick(rng, free_cells)
        objects[int(index)] = _make_object(rng, shape, color, size, row, col)
    return Scene(_row_major(objects), scene.texture, scene.tone)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _mention(obj: SceneObject, rng: np.random.Generator) -> str:
    """'a small red circle', or without the size word ('a red circle') with probability 1/3."""
    words = [obj.color, obj.shape] if rng.random() < DROP_SIZE_PROBABILITY else [obj.size, obj.color, obj.shape]
    return _with_article(" ".join(words))


def _relations(scene: Scene) -> list[tuple[SceneObject, str, SceneObject]]:
    """Every (a, relation, b) that holds: 'above'/'below' in the same column, 'to the left/right of' in a row."""
    relations = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b:
                continue
            if a.col == b.col:
                relations.append((a, "above" if a.row < b.row else "below", b))
            elif a.row == b.row:
                relations.append((a, "to the left of" if a.col < b.col else "to the right of", b))
    return relations


def scene_captions(scene: Scene, rng: np.random.Generator, num_captions: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """`num_captions` distinct short captions, each true of `scene` and naming one or two of its objects."""
    relations = _relations(scene)
    captions: list[str] = []
    while len(captions) < num_captions:
        kind = CAPTION_KINDS[int(rng.choice(len(CAPTION_KINDS), p=CAPTION_KIND_WEIGHTS))]
        if kind == "relation" and relations:
            a, relation, b = _pick(rng, relations)
            caption = f"{_mention(a, rng)} {relation} {_mention(b, rng)}"
        elif kind == "position":
            obj = _pick(rng, scene.objects)
            caption = f"{_mention(obj, rng)} {obj.position}"
        else:
            first, second = rng.choice(len(scene.objects), size=2, replace=False)
            caption = f"{_mention(scene.objects[int(first)], rng)} and {_mention(scene.objects[int(second)], rng)}"
        if caption not in captions:
            captions.append(caption)
    return captions


def _mention_pattern(name: str) -> str:
    size, color, shape = "|".join(SIZES), "|".join(COLORS), "|".join(SHAPES)
    return rf"an? (?:(?P<{name}_size>{size}) )?(?P<{name}_color>{color}) (?P<{name}_shape>{shape})"


_CELL_OF_POSITION = {phrase: (row, col) for row, phrases in enumerate(POSITIONS) for col, phrase in enumerate(phrases)}
_RELATION_WORDS = ("above", "below", "to the left of", "to the right of")
# The three caption kinds of `scene_captions`, as full-match patterns.
_CAPTION_PATTERNS = {
    "position": re.compile(rf"{_mention_pattern('a')} (?P<position>{'|'.join(_CELL_OF_POSITION)})"),
    "pair": re.compile(rf"{_mention_pattern('a')} and {_mention_pattern('b')}"),
    "relation": re.compile(
        rf"{_mention_pattern('a')} (?P<relation>{'|'.join(_RELATION_WORDS)}) {_mention_pattern('b')}"
    ),
}


def _fits(obj: SceneObject, match: re.Match, name: str) -> bool:
    size = match[f"{name}_size"]
    return obj.color == match[f"{name}_color"] and obj.shape == match[f"{name}_shape"] and size in (None, obj.size)


def _parse_caption(caption: str) -> tuple[str, re.Match]:
    matches = [(kind, match) for kind, pattern in _CAPTION_PATTERNS.items() if (match := pattern.fullmatch(caption))]
    if not matches:
        raise ValueError(f"not a caption of the synthetic benchmark's grammar: {caption!r}")
    return matches[0]


def caption_kind(caption: str) -> str:
    """`"position"`, `"pair"` or `"relation"`: which of the three templates of `scene_captions` wrote it."""
    return _parse_caption(caption)[0]


def caption_holds(caption: str, scene: Scene) -> bool:
    """Whether a caption in the grammar of `scene_captions` is true of `scene`, whichever image it was written for.

    A caption usually holds for several images ("a red circle and a blue star"): this is the ground truth of
    what a perfect reader could retrieve (`benchmarks/synthetic_ceiling.py`). Raises ValueError for a caption
    outside the grammar.
    """
    kind, match = _parse_caption(caption)
    if kind == "position":
        cell = _CELL_OF_POSITION[match["position"]]
        return any(_fits(obj, match, "a") and (obj.row, obj.col) == cell for obj in scene.objects)
    if kind == "pair":
        return any(
            a is not b and _fits(a, match, "a") and _fits(b, match, "b") for a in scene.objects for b in scene.objects
        )
    return any(
        relation == match["relation"] and _fits(a, match, "a") and _fits(b, match, "b")
        for a, relation, b in _relations(scene)
    )


def named_objects(caption: str, scene: Scene) -> list[SceneObject]:
    """The objects of `scene` that a caption in the grammar of `scene_captions` names, one per mention that fits an
    object of the scene ("a red circle and a blue star": the red circle and the blue star, if it has them; of its
    own image, a caption names one or two objects, since no two objects share shape and colour). Raises ValueError
    for a caption outside the grammar."""
    kind, match = _parse_caption(caption)
    mentions = ("a",) if kind == "position" else ("a", "b")
    return [obj for name in mentions for obj in scene.objects if _fits(obj, match, name)]


def read_scenes(folder: str | os.PathLike, split: str) -> list[Scene]:
    """The scenes of a generated split (`{split}_scenes.jsonl`), in image order."""
    path = Path(folder) / f"{split}_scenes.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no scene file (is {folder} a synthetic benchmark folder?)")
    return [Scene.from_dict(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]


def dense_caption(scene: Scene) -> str:
    """The exhaustive description: the object count and background, then every object with its size, color,
    shape and position, in row-major order."""
    sentences = [f"The image shows {NUMBER_WORDS[len(scene.objects)]} objects on a {scene.texture} light background."]
    for obj in scene.objects:
        position = obj.position[0].upper() + obj.position[1:]
        sentences.append(f"{position} there is {_with_article(f'{obj.size} {obj.color} {obj.shape}')}.")
    return " ".join(sentences)


def _background(scene: Scene, side: int) -> np.ndarray:
    """(side, side, 3) uint8 background: the tone, with a faint texture."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    if scene.texture == "striped":
        period = side / 16
        shade = -10.0 * (((x + y) // period) % 2)
    elif scene.texture == "dotted":
        period = side / 12
        shade = -24.0 * (((x % period) < period / 5) & ((y % period) < period / 5))
    elif scene.texture == "shaded":
        shade = 24.0 * (y / side - 0.5)
    else:
        shade = np.zeros_like(x)
    image = np.asarray(scene.tone, dtype=np.float32) + shade[..., None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape centred on (cx, cy) with radius r (image y points down)."""

    def on_circle(radius: float, degrees: float) -> tuple[float, float]:
        angle = math.radians(degrees)
        return cx + radius * math.cos(angle), cy - radius * math.sin(angle)

    if shape == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [on_circle(r, 90 + 120 * k) for k in range(3)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "star":
        return [on_circle(r if k % 2 == 0 else 0.45 * r, 90 + 36 * k) for k in range(10)]
    if shape == "cross":
        a, w = r, 0.3 * r  # arm length and half-width
        outline = [(-w, a), (w, a), (w, w), (a, w), (a, -w), (w, -w)]
        outline += [(-x, -y) for x, y in outline]  # the other half, by point symmetry
        return [(cx + dx, cy - dy) for dx, dy in outline]
    if shape == "heart":
        points = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            hx = 16 * math.sin(t) ** 3
            hy = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((cx + r * hx / 17, cy - r * (hy + 2.5) / 17))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Renders `scene` as an `image_size` x `image_size` RGB image.

    The shapes are drawn at `SUPERSAMPLE` times the size and box-downsampled (anti-aliased edges); the background
    is made at the final size, so its pixels come out unchanged."""
    side = image_size * SUPERSAMPLE
    background = Image.fromarray(_background(scene, image_size), mode="RGB")
    canvas = background.resize((side, side), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw_object(draw, obj, side, obj.rgb)
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)


def render_object_mask(obj: SceneObject, image_size: int) -> np.ndarray:
    """(image_size, image_size) float32: the share of each pixel that `obj` covers in `render_scene`'s image (drawn
    the same way, at `SUPERSAMPLE` times the size and box-downsampled)."""
    side = image_size * SUPERSAMPLE
    canvas = Image.new("L", (side, side), 0)
    _draw_object(ImageDraw.Draw(canvas), obj, side, 255)
    small = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int, fill: tuple[int, int, int] | int) -> None:
    cx, cy, r = obj.center[0] * side, obj.center[1] * side, obj.radius * side
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_shape_polygon(obj.shape, cx, cy, r), fill=fill)


def _split_scenes(config: SyntheticBenchmarkConfig, split: str):
    """Yields (scene, captions) for each image of `split`; image `i` draws from its own seeded generator."""
    previous = None
    for index in range(config.split_sizes()[split]):
        rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
        if previous is not None and rng.random() < config.hard_negative_rate:
            scene = edit_scene(previous, rng)
        else:
            scene = sample_scene(rng, config.min_objects, config.max_objects)
        yield scene, scene_captions(scene, rng)
        previous = scene


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_benchmark(folder: Path, config: SyntheticBenchmarkConfig) -> dict:
    """Writes the whole benchmark into `folder` (an empty folder) and returns the marker's content."""
    (folder / IMAGE_FOLDER).mkdir()
    id_mapping: dict[str, str] = {}
    counts = {}
    for split in SPLITS:
        captions, caption_ids, dense_rows, scene_rows = [], [], [], []
        for index, (scene, scene_caps) in enumerate(_split_scenes(config, split)):
            image_id, file_name = len(id_mapping), f"{split}_{index:05d}.png"
            id_mapping[str(image_id)] = file_name
            render_scene(scene, config.image_size).save(folder / IMAGE_FOLDER / file_name, format="PNG")
            captions += scene_caps
            caption_ids += [str(image_id)] * len(scene_caps)
            text = dense_caption(scene)
            dense_rows.append({"text": text, "model_id": DENSE_MODEL_ID, "metadata": {"length": len(text)}})
            scene_rows.append({"image_id": image_id, "file_name": file_name, **scene.to_dict()})
        files = RetrievalFiles.in_folder(folder, DATASET_NAME, split)
        _write_lines(files.captions, captions)
        _write_lines(files.image_ids, caption_ids)
        _write_lines(files.dense_captions, [json.dumps(row) for row in dense_rows])
        _write_lines(folder / f"{split}_scenes.jsonl", [json.dumps(row) for row in scene_rows])
        counts[split] = {"images": len(dense_rows), "captions": len(captions)}
    # Same format as the authors' id_mapping.json.
    files.id_mapping.write_text(json.dumps(id_mapping, indent=0), encoding="utf-8")
    return {"generator": __name__, "version": GENERATOR_VERSION, "config": asdict(config), "splits": counts}


def read_benchmark_info(folder: Path) -> dict | None:
    """The benchmark description `folder` holds (its configuration and generator version), or None."""
    try:
        return json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def benchmark_is_complete(folder: Path, config: SyntheticBenchmarkConfig) -> bool:
    """True if `folder` holds a complete benchmark written by this generator version with `config`."""
    info = read_benchmark_info(folder)
    return info is not None and info.get("version") == GENERATOR_VERSION and info.get("config") == asdict(config)


def _temporary_name(output_dir: Path, kind: str) -> Path:
    return output_dir.with_name(f".{output_dir.name}.{kind}-{socket.gethostname()}-{os.getpid()}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(output_dir: Path) -> None:
    """Removes temporary folders left by killed generations (same host, process gone)."""
    for kind in ("partial", "old"):
        prefix = f".{output_dir.name}.{kind}-{socket.gethostname()}-"
        for path in output_dir.parent.glob(prefix + "*"):
            pid = path.name[len(prefix) :]
            if pid.isdigit() and not _process_alive(int(pid)):
                logger.info("Removing %s, left by an interrupted generation.", path)
                shutil.rmtree(path, ignore_errors=True)


def generate_synthetic_benchmark(
    output_dir: str | os.PathLike, config: SyntheticBenchmarkConfig | None = None, overwrite: bool = False
) -> Path:
    r"""
    Writes the synthetic benchmark to `output_dir`, unless it already holds the same one (then nothing is done).

    The files are written to a temporary sibling folder, which is renamed to `output_dir` once complete (with
    `synthetic_info.json` written last): an interrupted run leaves no partial `output_dir` and the next call
    starts afresh (and removes the leftover of a killed run). Several processes may call this at once: each
    writes its own copy and the first rename wins.

    Args:
        output_dir (`str` or `os.PathLike`): destination folder; it may exist if empty.
        config ([`SyntheticBenchmarkConfig`], *optional*): sizes and seed; the defaults if None.
        overwrite (`bool`, *optional*, defaults to `False`): replace an `output_dir` that holds something else
            (another configuration, or files that are not a complete benchmark).

    Returns:
        `Path`: `output_dir`, to be read with `load_retrieval_split(output_dir, "synthetic", split)`.

    Raises:
        FileExistsError: `output_dir` is not empty and holds no complete benchmark of this configuration, and
            `overwrite` is False.
    """
    config = config if config is not None else SyntheticBenchmarkConfig()
    output_dir = Path(output_dir).absolute()
    if benchmark_is_complete(output_dir, config):
        logger.info("Synthetic benchmark already in %s.", output_dir)
        return output_dir
    occupied = output_dir.exists() and any(output_dir.iterdir())
    if occupied and not overwrite:
        info = read_benchmark_info(output_dir)
        found = "no complete synthetic benchmark" if info is None else f"a benchmark made with {info.get('config')}"
        raise FileExistsError(
            f"{output_dir} holds {found}, not one made with {asdict(config)} (generator version "
            f"{GENERATOR_VERSION}). Choose another folder, or pass overwrite=True (--overwrite) to replace it."
        )

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(output_dir)
    partial = _temporary_name(output_dir, "partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    start = time.perf_counter()
    try:
        info = _write_benchmark(partial, config)
        (partial / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _publish(partial, output_dir, config, replace_existing=occupied)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("Wrote the synthetic benchmark to %s in %.1f s.", output_dir, time.perf_counter() - start)
    return output_dir


def _publish(partial: Path, output_dir: Path, config: SyntheticBenchmarkConfig, replace_existing: bool) -> None:
    """Renames the complete `partial` folder to `output_dir` (moving an existing `output_dir` away first if
    `replace_existing`)."""
    if replace_existing:
        old = _temporary_name(output_dir, "old")
        os.rename(output_dir, old)
        os.rename(partial, output_dir)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(partial, output_dir)  # atomic; replaces an empty folder
    except OSError:
        if not benchmark_is_complete(output_dir, config):
            raise
        # Another process published the same benchmark first; ours is removed by the caller.


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point: `python -m transformers_seps.train.data.synthetic --output_dir DIR [options]`."""
    parser = HfArgumentParser((_OutputArguments, SyntheticBenchmarkConfig))
    output_args, config = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    output_dir = generate_synthetic_benchmark(output_args.output_dir, config, overwrite=output_args.overwrite)
    sizes = ", ".join(f"{split} {count}" for split, count in config.split_sizes().items())
    print(f"{output_dir}: {sizes} images, 5 captions each ({time.perf_counter() - start:.1f} s)")
    return output_dir


@dataclass
class _OutputArguments:
    output_dir: str = field(metadata={"help": "Folder to write the benchmark to (created; may exist if empty)."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace output_dir if it holds anything but this exact benchmark."}
    )


if __name__ == "__main__":
    main()
