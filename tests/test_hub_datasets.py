"""Flickr30K and MS-COCO from `datasets` datasets in their Hub layouts (nlphuji/flickr30k: one row per image with an
image column, a list of captions, a split column and a file name; yerevann/coco-karpathy: `sentences`, `cocoid`,
`filepath` and image files instead of an image column), built offline from the SEPS authors' real id files
(tests/fixtures/authors_layout) and saved with `save_to_disk` or as parquet. The same data in the authors' folder
layout and in a Hub layout must give the same split and the same evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import tiny_model_with_processor
from PIL import Image
from test_authors_layout import IMAGE_FOLDERS, TEST_SPLITS, copy_layout, read_lines, tiny_backbones, write_images

from transformers_seps.train.arguments import (
    DataArguments,
    EvaluationArguments,
    ModelArguments,
    RetrievalTrainingArguments,
)
from transformers_seps.train.cli import UsageError
from transformers_seps.train.data import (
    HubColumns,
    RetrievalDataError,
    SepsRetrievalCollator,
    UnreadableImageError,
    build_caption_dataset,
    load_hub_split,
    load_retrieval_split,
)
from transformers_seps.train.evaluation import resolve_evaluation_arguments, run_evaluation
from transformers_seps.train.training import run_training, validate_training_arguments

__all__ = ["tiny_backbones"]  # a fixture of test_authors_layout, used here

# Our split -> the Karpathy split value the rows carry (the authors' COCO train images: some train, some restval).
KARPATHY_VALUE = {"train": "train", "dev": "val", "test": "test", "testall": "test"}
COCO_COLUMNS = HubColumns(captions="sentences", image_id="cocoid")


def authors_split_rows(data_root: Path, split: str) -> tuple[list[int], list[list[str]]]:
    """Image ids (first-appearance order) and their 5 captions, read straight from the authors' text files."""
    captions = read_lines(data_root / f"{split}_caps.txt")
    ids = [int(line) for line in read_lines(data_root / f"{split}_ids.txt")]
    if len(ids) != len(captions):  # one id per image (the training splits)
        ids = [image_id for image_id in ids for _ in range(5)]
    image_ids = list(dict.fromkeys(ids))
    return image_ids, [[c for c, i in zip(captions, ids, strict=True) if i == image_id] for image_id in image_ids]


def hub_layout(data_root: Path, image_root: Path, dataset: str, with_images: bool = True) -> datasets.Dataset:
    """The authors' train, dev and test splits as one dataset in the Hub layout of `dataset` (module docstring)."""
    mapping = json.loads((data_root / "id_mapping.json").read_text())
    columns: dict[str, list] = {"caption" if dataset == "f30k" else "sentences": [], "split": [], "filename": []}
    columns.update({"img_id" if dataset == "f30k" else "cocoid": [], "image" if with_images else "filepath": []})
    for split in ("train", "dev", TEST_SPLITS[dataset]):
        image_ids, captions = authors_split_rows(data_root, split)
        for number, (image_id, image_captions) in enumerate(zip(image_ids, captions, strict=True)):
            value = "restval" if dataset == "coco" and split == "train" and number % 2 else KARPATHY_VALUE[split]
            folder, _, name = mapping[str(image_id)].rpartition("/")
            columns["split"].append(value)
            columns["filename"].append(name)
            columns["caption" if dataset == "f30k" else "sentences"].append(image_captions)
            columns["img_id" if dataset == "f30k" else "cocoid"].append(
                str(image_id) if dataset == "f30k" else image_id
            )
            if with_images:
                columns["image"].append({"bytes": (image_root / mapping[str(image_id)]).read_bytes(), "path": None})
            else:
                columns["filepath"].append(folder)
    features = {name: datasets.Value("string") for name in ("split", "filename", "img_id", "filepath")}
    features.update(
        caption=datasets.List(datasets.Value("string")),
        sentences=datasets.List(datasets.Value("string")),
        cocoid=datasets.Value("int64"),
        image=datasets.Image(),
    )
    return datasets.Dataset.from_dict(columns, features=datasets.Features({n: features[n] for n in columns}))


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch) -> None:
    """`load_dataset` (parquet) writes its Arrow cache under the test's folder, not the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


@pytest.fixture
def f30k_folder(tmp_path: Path) -> tuple[Path, Path]:
    data_root = copy_layout("f30k", tmp_path / "data")
    image_root = tmp_path / "data" / IMAGE_FOLDERS["f30k"]
    write_images(data_root, image_root)
    return data_root, image_root


def save(table: datasets.Dataset, folder: Path, storage: str) -> Path:
    """`save_to_disk` as a DatasetDict with one `test` split (as nlphuji/flickr30k), or one parquet file."""
    if storage == "save_to_disk":
        datasets.DatasetDict(test=table).save_to_disk(folder)
        return folder
    folder.mkdir(parents=True)
    table.to_parquet(folder / "data.parquet")
    return folder / "data.parquet"


def assert_same_split(hub, folder) -> None:
    assert hub.image_ids == folder.image_ids
    assert hub.captions == folder.captions
    assert hub.caption_to_image == folder.caption_to_image
    assert hub.dense_captions == folder.dense_captions
    for index in range(folder.num_images):
        assert np.array_equal(np.asarray(hub.load_image(index)), np.asarray(folder.load_image(index)))


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["save_to_disk", "parquet"])
def test_flickr30k_layout_gives_the_authors_splits(f30k_folder, tmp_path: Path, storage: str):
    data_root, image_root = f30k_folder
    location = save(hub_layout(data_root, image_root, "f30k"), tmp_path / "hub", storage)
    for split in ("train", "dev", "test"):
        folder = load_retrieval_split(data_root, "f30k", split)
        hub = load_hub_split(location, "f30k", split, dense_captions=data_root)
        assert_same_split(hub, folder)
        assert hub.image_files == [Path(name).name for name in folder.image_files]
    # The authors ship no dev dense captions: the dev split has none, the others their own image's.
    assert load_hub_split(location, "f30k", "dev", dense_captions=data_root).dense_captions is None
    assert hub.num_images == 10 and hub.dense_captions[0] == folder.dense_captions[0]


def test_coco_karpathy_layout_reads_image_files_and_restval(tmp_path: Path):
    """yerevann/coco-karpathy: `sentences`, `cocoid`, `filepath` (train2014/val2014) and no image column; the
    training split is Karpathy's train + restval."""
    data_root = copy_layout("coco", tmp_path / "data")
    image_root = tmp_path / "data" / IMAGE_FOLDERS["coco"]
    write_images(data_root, image_root)
    location = save(hub_layout(data_root, image_root, "coco", with_images=False), tmp_path / "hub", "save_to_disk")
    for split in ("train", "dev", "testall"):
        folder = load_retrieval_split(data_root, "coco", split)
        hub = load_hub_split(location, "coco", split, data_root, columns=COCO_COLUMNS, image_root=image_root)
        assert_same_split(hub, folder)
    assert hub.image_files == folder.image_files  # val2014/COCO_val2014_....jpg under the image root
    with pytest.raises(RetrievalDataError, match=r"no image column 'image' \(--image_column\).*--image_root"):
        load_hub_split(location, "coco", "testall", data_root, columns=COCO_COLUMNS)


def test_images_stay_on_disk_until_a_batch_decodes_them(f30k_folder, tmp_path: Path, monkeypatch):
    data_root, image_root = f30k_folder
    location = save(hub_layout(data_root, image_root, "f30k"), tmp_path / "hub", "save_to_disk")
    opened = []
    original_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(args) or original_open(*args, **kwargs))

    split = load_hub_split(location, "f30k", "train", dense_captions=data_root)

    assert opened == []  # loading decoded nothing
    store = split.image_store
    assert store.cache_files and all(Path(entry["filename"]).is_file() for entry in store.cache_files)  # mmapped
    assert store.features[store.column_names[0]].decode is False
    _, processor = tiny_model_with_processor()
    rows = build_caption_dataset(split).select([7, 12])
    batch = SepsRetrievalCollator(processor, split=split)([rows[0], rows[1]])
    assert len(opened) == 2 and batch["pixel_values"].shape[0] == 2
    assert batch["image_ids"].tolist() == [split.image_ids[1], split.image_ids[2]]


def test_generator_jsonl_joins_by_file_name(f30k_folder, tmp_path: Path):
    """A jsonl of examples/generate_dense_captions.py (records keyed by the image's relative path, in any order)
    gives each image its own dense caption; an error record or a missing image is an error naming the file."""
    data_root, image_root = f30k_folder
    location = save(hub_layout(data_root, image_root, "f30k"), tmp_path / "hub", "save_to_disk")
    folder = load_retrieval_split(data_root, "f30k", "test")
    records = [
        {"image_id": f"images/{Path(name).name}", "text": f"dense {index}", "model_id": "m", "metadata": {}}
        for index, name in enumerate(folder.image_files)
    ]
    jsonl = tmp_path / "dense.jsonl"
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in reversed(records)))

    split = load_hub_split(location, "f30k", "test", dense_captions=jsonl)
    assert split.dense_captions == [f"dense {index}" for index in range(10)]

    records[3] = {"image_id": records[3]["image_id"], "error": "OSError: truncated", "model_id": "m"}
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in records))
    missing = Path(folder.image_files[3]).name
    with pytest.raises(RetrievalDataError, match=rf"no dense caption for image {missing} \(1 of the split's 10"):
        load_hub_split(location, "f30k", "test", dense_captions=jsonl)
    # The authors' own jsonl has no file names: their folder must be passed instead.
    with pytest.raises(RetrievalDataError, match="pass their annotation folder"):
        load_hub_split(location, "f30k", "test", dense_captions=data_root / "f30k_test.jsonl")


def test_bad_datasets_are_refused_naming_the_problem(f30k_folder, tmp_path: Path):
    data_root, image_root = f30k_folder
    table = hub_layout(data_root, image_root, "f30k")
    location = save(table, tmp_path / "hub", "save_to_disk")
    with pytest.raises(ValueError, match="dense_captions_mode='required' needs a `dense_captions` source"):
        load_hub_split(location, "f30k", "test", dense_captions_mode="required")
    with pytest.raises(RetrievalDataError, match=r"no column 'captions' \(--caption_column\)"):
        load_hub_split(location, "f30k", "test", columns=HubColumns(captions="captions"))
    with pytest.raises(RetrievalDataError, match=r"'split' \(--split_column\) in \['val'\].*\['test', 'train'\]"):
        load_hub_split(
            save(table.filter(lambda row: row["split"] != "val"), tmp_path / "nodev", "parquet"), "f30k", "dev"
        )

    def drop_a_caption(row: dict) -> dict:
        return {"caption": row["caption"][:4] if row["filename"] == "1000092795.jpg" else row["caption"]}

    short = save(table.map(drop_a_caption), tmp_path / "short", "save_to_disk")
    with pytest.raises(RetrievalDataError, match=r"image 1000092795.jpg: 4 captions in 'caption'"):
        load_hub_split(short, "f30k", "train")
    bad_ids = save(table.map(lambda row: {"img_id": "x" + row["img_id"]}), tmp_path / "ids", "save_to_disk")
    with pytest.raises(RetrievalDataError, match=r"'img_id' \(--image_id_column\) is 'x0', not an integer"):
        load_hub_split(bad_ids, "f30k", "train")

    def corrupt(row: dict) -> dict:
        garbage = {"bytes": b"not an image", "path": None}
        return {"image": garbage if row["filename"] == "10002456.jpg" else row["image"]}

    undecoded = table.cast_column("image", datasets.Image(decode=False))
    corrupted = save(undecoded.map(corrupt).cast_column("image", datasets.Image()), tmp_path / "bad", "save_to_disk")
    split = load_hub_split(corrupted, "f30k", "train")  # loading decodes nothing, so it cannot notice
    with pytest.raises(UnreadableImageError, match=r"10002456.jpg: cannot decode the image"):
        split.load_image(1)


# ---------------------------------------------------------------------------------------------------------------
# The runners
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluation_equals_the_authors_folder_evaluation(f30k_folder, tmp_path: Path, capsys):
    """`examples/evaluate_retrieval.py --dataset_name` and `--data_root` on the same data: identical metrics."""
    data_root, image_root = f30k_folder
    location = save(hub_layout(data_root, image_root, "f30k"), tmp_path / "hub", "parquet")
    model, processor = tiny_model_with_processor("official")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    common = dict(model=str(tmp_path / "model"), dataset="f30k", batch_size=4, images_per_block=3)

    from_folder = run_evaluation(EvaluationArguments(data_root=str(data_root), **common))
    from_hub = run_evaluation(EvaluationArguments(dataset_name=str(location), dense_captions=str(data_root), **common))

    assert from_hub == from_folder
    assert from_folder["rsum"] > 0  # a real evaluation, not two empty reports
    assert "f30k/test, score S + 0 * G, dense pairing: image" in capsys.readouterr().out  # first_stage_weight 0


def test_runner_flags_are_checked_before_any_work(f30k_folder, tmp_path: Path):
    data_root, image_root = f30k_folder
    location = str(save(hub_layout(data_root, image_root, "f30k"), tmp_path / "hub", "save_to_disk"))
    model, processor = tiny_model_with_processor()
    model.save_pretrained(tmp_path / "model")
    evaluation = dict(model=str(tmp_path / "model"), dataset_name=location)
    with pytest.raises(UsageError, match="--dataset_name needs --dataset f30k|coco"):
        resolve_evaluation_arguments(EvaluationArguments(**evaluation))
    with pytest.raises(UsageError, match="pass --dense_captions"):
        resolve_evaluation_arguments(EvaluationArguments(dataset="f30k", **evaluation))
    with pytest.raises(UsageError, match="pass one of them"):
        resolve_evaluation_arguments(EvaluationArguments(dataset="f30k", data_root=str(data_root), **evaluation))
    resolved = resolve_evaluation_arguments(EvaluationArguments(dataset="coco", dense_pairing="none", **evaluation))
    assert resolved.split == "testall"

    training = RetrievalTrainingArguments(output_dir=str(tmp_path / "run"))
    with pytest.raises(UsageError, match="--dataset_name needs --dataset f30k or coco.*got --dataset synthetic"):
        validate_training_arguments(ModelArguments(), DataArguments(dataset_name=location), training)
    with pytest.raises(UsageError, match="--dataset_name .*missing: not found"):
        data = DataArguments(dataset="f30k", dataset_name=str(tmp_path / "missing"), dense_captions=str(data_root))
        validate_training_arguments(ModelArguments(), data, training)
    with pytest.raises(UsageError, match="--dense_captions .*nothing: this path does not exist"):
        data = DataArguments(dataset="f30k", dataset_name=location, dense_captions=str(tmp_path / "nothing"))
        validate_training_arguments(ModelArguments(), data, training)


@pytest.mark.slow
def test_short_training_run_on_a_hub_dataset(f30k_folder, tiny_backbones, tmp_path: Path, capsys):
    data_root, image_root = f30k_folder
    location = save(hub_layout(data_root, image_root, "f30k"), tmp_path / "hub", "save_to_disk")
    vision_model, text_model = tiny_backbones
    output_dir = tmp_path / "run"

    results = run_training(
        ModelArguments(vision_model=vision_model, text_model=text_model, embed_dim=16),
        DataArguments(dataset="f30k", dataset_name=str(location), dense_captions=str(data_root), data_root="unused"),
        RetrievalTrainingArguments(
            output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=10, per_device_eval_batch_size=25
        ),
    )

    assert "150 pairs per epoch, 15 steps per epoch, 2 steps" in capsys.readouterr().out
    assert json.loads((output_dir / "eval_results.json").read_text()) == results
    assert 0 <= results["rsum"] <= 600 and results["best_epoch"] == 0
