"""A gallery index on disk (`SepsRetriever.save` / `load`, `transformers_seps.index`)."""

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_example, tiny_model_with_processor
from PIL import Image

from transformers_seps import SepsConfig, SepsModel, SepsProcessor
from transformers_seps.configuration_seps import NON_SCORING_FIELDS, SCORING_FIELDS
from transformers_seps.index import (
    MANIFEST_FILE,
    StoredGallery,
    dequantize_tokens,
    model_signature,
    quantize_tokens,
    signature_difference,
)
from transformers_seps.retrieval import SepsRetriever
from transformers_seps.train import indexing
from transformers_seps.train.cli import UsageError
from transformers_seps.train.data import RetrievalDataError
from transformers_seps.train.index_arguments import IndexArguments
from transformers_seps.train.indexing import GallerySource, build_index, gallery_from_arguments

QUERIES = ["a red circle", "two blue squares on the left", "a green star", "a small yellow line"]
NUM_IMAGES = 11


def gallery(count: int) -> tuple[list[Image.Image], list[str]]:
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(count)]
    # Dense captions of different lengths, so that shards pad them to different lengths.
    dense = [" ".join(["a picture with shapes"] + ["and colours"] * (i % 4)) for i in range(count)]
    return images, dense


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A retriever with 11 images (two add_images calls) and dense captions, saved in float32, float16 and int8."""
    model, processor = tiny_model_with_processor("paper")
    images, dense = gallery(NUM_IMAGES)
    retriever = SepsRetriever(model, processor, batch_size=4)
    retriever.add_images(images[:6], dense[:6], image_ids=[f"img-{i}" for i in range(6)])
    retriever.add_images(images[6:], dense[6:], image_ids=[f"img-{i}" for i in range(6, NUM_IMAGES)])
    root = tmp_path_factory.mktemp("index")
    retriever.save(root / "fp32", dtype=torch.float32, shard_size=4)
    retriever.save(root / "fp16", shard_size=4)
    retriever.save(root / "int8", dtype=torch.int8, shard_size=4)
    return model, processor, retriever, root


@pytest.mark.parametrize("shortlist_size", [None, 3, 6, 50])
def test_search_on_a_loaded_float32_index_equals_the_in_memory_search(built, shortlist_size):
    model, processor, retriever, root = built
    retriever.shortlist_size = shortlist_size
    loaded = SepsRetriever.load(root / "fp32", model, shortlist_size=shortlist_size)
    assert len(loaded) == NUM_IMAGES and loaded.image_ids == retriever.image_ids
    expected, result = retriever.search(QUERIES, top_k=5), loaded.search(QUERIES, top_k=5)
    assert torch.equal(result.indices, expected.indices)
    assert torch.equal(result.scores, expected.scores)


def test_a_float16_index_ranks_like_the_float32_one(built):
    model, _, retriever, root = built
    retriever.shortlist_size = None
    loaded = SepsRetriever.load(root / "fp16", model)
    expected, result = retriever.search(QUERIES, top_k=NUM_IMAGES), loaded.search(QUERIES, top_k=NUM_IMAGES)
    torch.testing.assert_close(result.scores, expected.scores, atol=5e-3, rtol=0)
    # The half-precision tokens take half the disk of the float32 ones (the global vectors stay float32).
    sizes = {name: sum(f.stat().st_size for f in (root / name).glob("shard-*")) for name in ("fp16", "fp32")}
    stored = retriever._gallery()
    float32_bytes = 4 * (stored.image_embeds.numel() + stored.dense_embeds.numel())
    assert 0.45 * float32_bytes < sizes["fp32"] - sizes["fp16"] < 0.55 * float32_bytes


def test_int8_codes_are_within_half_a_step_of_each_token():
    tokens = torch.randn(3, 5, 64) * torch.logspace(-3, 2, 5)[:, None]  # tokens of very different norms
    tokens[1, 2] = 0
    codes, scales = quantize_tokens(tokens)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float16 and scales.shape == (3, 5, 1)
    assert codes.abs().amax(dim=-1).max() == 127  # each token uses the whole range...
    assert torch.equal(codes[1, 2], torch.zeros(64, dtype=torch.int8))  # ...but a zero token, which stays zero
    decoded = torch.from_numpy(dequantize_tokens(codes.numpy(), scales.numpy()))
    step = scales.float()
    assert ((decoded - tokens).abs() <= step / 2 * (1 + 1e-5)).all()


def test_an_int8_index_decodes_its_tokens_and_ranks_like_the_float32_one(built):
    model, _, retriever, root = built
    retriever.shortlist_size = None
    stored = StoredGallery(root / "int8", model)
    assert json.loads((root / "int8" / MANIFEST_FILE).read_text())["dtype"] == "int8"
    rows = torch.tensor([9, 0, 5, 4])  # from three shards
    images, dense, mask = stored.rows(rows)
    expected_images, expected_dense, expected_mask = retriever._gallery().rows(rows)
    assert images.dtype == torch.float32 and torch.equal(mask, expected_mask.long())
    for decoded, exact in ((images, expected_images), (dense, expected_dense)):
        step = exact.abs().amax(dim=-1, keepdim=True) / 127
        assert ((decoded - exact).abs() <= step * 0.51 + 1e-6).all()
    loaded = SepsRetriever.load(root / "int8", model)
    expected, result = retriever.search(QUERIES, top_k=NUM_IMAGES), loaded.search(QUERIES, top_k=NUM_IMAGES)
    torch.testing.assert_close(result.scores, expected.scores, atol=2e-2, rtol=0)
    # A byte per value and two per token's scale, against four per value in float32.
    sizes = {name: sum(f.stat().st_size for f in (root / name).glob("shard-*")) for name in ("int8", "fp32")}
    stored_tokens = retriever._gallery()
    values = stored_tokens.image_embeds.numel() + stored_tokens.dense_embeds.numel()
    tokens = values // stored_tokens.image_embeds.shape[-1]
    assert sizes["fp32"] - sizes["int8"] == pytest.approx(3 * values - 2 * tokens, abs=2000)  # headers differ a bit


@pytest.mark.parametrize("dtype", [torch.float16, torch.int8])
def test_a_model_that_fuses_its_first_stage_searches_a_compressed_index(dtype, tmp_path):
    """The fused score recomputes the first stage from the stored tokens (float16, or int8 decoded), whatever the
    model's own dtype."""
    model, processor = tiny_model_with_processor("paper")
    model.config.first_stage_weight = 0.5
    images, dense = gallery(6)
    retriever = SepsRetriever(model, processor, shortlist_size=3)
    retriever.add_images(images, dense)
    retriever.save(tmp_path / "index", dtype=dtype, shard_size=4)
    expected = retriever.search(QUERIES, top_k=3)
    result = SepsRetriever.load(tmp_path / "index", model, shortlist_size=3).search(QUERIES, top_k=3)
    torch.testing.assert_close(result.scores, expected.scores, atol=2e-2, rtol=0)


def test_the_manifest_lists_the_shards_and_the_first_stage_holds_the_global_embeddings(built):
    model, _, retriever, root = built
    manifest = json.loads((root / "fp32" / MANIFEST_FILE).read_text())
    assert [entry["num_images"] for entry in manifest["shards"]] == [4, 4, 3]
    assert manifest["num_images"] == NUM_IMAGES and manifest["first_stage"] == "exact"
    stored = StoredGallery(root / "fp32", model)
    num_vectors = model.config.num_global_image_vectors
    assert manifest["global_vectors"] == num_vectors > 1
    # Row image * V + k of the first stage holds vector k of the image.
    vectors = stored.first_stage.reconstruct_n(0, NUM_IMAGES * num_vectors).reshape(NUM_IMAGES, num_vectors, -1)
    torch.testing.assert_close(torch.from_numpy(vectors), retriever._gallery().global_embeds)
    # Rows are read from several shards, in the order asked, dense captions padded to the gallery's longest.
    rows = torch.tensor([9, 0, 5, 4])
    images, dense, mask = stored.rows(rows)
    expected_images, expected_dense, expected_mask = retriever._gallery().rows(rows)
    assert torch.equal(images, expected_images) and torch.equal(dense, expected_dense)
    assert torch.equal(mask, expected_mask.long())


def test_an_approximate_first_stage_finds_the_exact_shortlist_of_a_small_gallery(built, tmp_path):
    model, _, retriever, root = built
    retriever.shortlist_size = 4
    retriever.save(tmp_path / "hnsw", first_stage="hnsw")
    loaded = SepsRetriever.load(tmp_path / "hnsw", model, shortlist_size=4)
    exact = SepsRetriever.load(root / "fp16", model, shortlist_size=4)
    assert torch.equal(loaded.search(QUERIES, top_k=3).indices, exact.search(QUERIES, top_k=3).indices)


def test_a_folder_without_manifest_is_never_loaded(built, tmp_path):
    model, _, _, root = built
    partial = tmp_path / "partial"
    shutil.copytree(root / "fp32", partial)
    (partial / MANIFEST_FILE).unlink()
    with pytest.raises(ValueError, match="no manifest.json: not a finished index"):
        SepsRetriever.load(partial, model)


def test_a_truncated_or_missing_shard_is_named(built, tmp_path):
    model, _, _, root = built
    damaged = tmp_path / "damaged"
    shutil.copytree(root / "fp32", damaged)
    shard = sorted(damaged.glob("shard-*"))[1]
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(ValueError, match=f"{shard.name}: truncated"):
        SepsRetriever.load(damaged, model)
    shard.unlink()
    with pytest.raises(ValueError, match=f"{shard.name}, listed in the manifest, is missing"):
        SepsRetriever.load(damaged, model)


def test_another_model_is_refused_naming_what_differs(built):
    _, processor, _, root = built
    other, _ = tiny_model_with_processor("paper", seed=1)
    with pytest.raises(ValueError, match="encoded by another model: the weights differ"):
        SepsRetriever.load(root / "fp32", other, processor)


def test_every_config_field_either_shapes_scores_or_not():
    """A new `SepsConfig` field must be classified: SCORING_FIELDS are part of an index's model signature."""
    fields = set(SepsConfig.__annotations__)
    assert set(SCORING_FIELDS) | set(NON_SCORING_FIELDS) == fields
    assert not set(SCORING_FIELDS) & set(NON_SCORING_FIELDS)


def test_the_signature_follows_the_weights_and_the_scoring_fields_only(tmp_path):
    model, _ = tiny_model_with_processor("paper")
    before = model_signature(model)
    model.config.logit_scale = 12.5  # scales the logits, not S: the same ranking
    model.config.similarity_chunk_size = 7
    model.config.margin = 0.5
    assert model_signature(model) == before
    model.save_pretrained(tmp_path / "saved")
    assert model_signature(SepsModel.from_pretrained(tmp_path / "saved")) == before  # another _name_or_path, dtype
    with torch.no_grad():
        model.text_model.embeddings.word_embeddings.weight[0, 0] += 1  # a backbone's weight
    changed = model_signature(model)
    assert changed != before and changed["config"] == before["config"]
    assert signature_difference(before, changed).startswith("the weights differ")
    model.config.sparse_ratio = 0.75
    model.config.text_config.layer_norm_eps = 1e-3
    assert signature_difference(before, model_signature(model)) == (
        "config fields differ: sparse_ratio 0.5 in the index, 0.75 in the model; text_config.layer_norm_eps 1e-12 in "
        "the index, 0.001 in the model"
    )


def search_in_a_fresh_process(index: Path, models: list[str], cwd: Path) -> list:
    """One process loads `index` with the model of each path of `models` and returns each search's best images."""
    script = (
        "import json, sys; from transformers_seps import SepsModel, SepsRetriever\n"
        "for path in sys.argv[2:]:\n"
        "    retriever = SepsRetriever.load(sys.argv[1], SepsModel.from_pretrained(path))\n"
        "    print(json.dumps(retriever.search('a red circle', top_k=3).indices.tolist()))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", script, str(index), *models]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()[-len(models) :]]


@pytest.mark.slow
def test_an_index_loads_with_the_same_weights_from_any_path_in_any_process(tmp_path):
    """Issue 24: save a model, build an index with it, then load the weights from `./relative`, the absolute path,
    a copy and a moved folder in fresh processes: the index opens and searches alike."""
    model, processor = tiny_model_with_processor("paper")
    model.save_pretrained(tmp_path / "m1")
    processor.save_pretrained(tmp_path / "m1")
    images, dense = gallery(5)
    retriever = SepsRetriever(SepsModel.from_pretrained(tmp_path / "m1"), processor)
    retriever.add_images(images, dense)
    retriever.save(tmp_path / "gallery.index")
    expected = retriever.search("a red circle", top_k=3).indices.tolist()
    shutil.copytree(tmp_path / "m1", tmp_path / "copy")
    models = ["./m1", str(tmp_path / "m1"), "copy"]
    assert search_in_a_fresh_process(tmp_path / "gallery.index", models, cwd=tmp_path) == [expected] * 3
    (tmp_path / "elsewhere").mkdir()
    shutil.move(tmp_path / "m1", tmp_path / "elsewhere" / "moved")
    moved = search_in_a_fresh_process(tmp_path / "gallery.index", ["moved"], cwd=tmp_path / "elsewhere")
    assert moved == [expected]


def test_save_refuses_a_non_empty_folder_and_a_loaded_retriever_is_saved_already(built, tmp_path):
    model, _, retriever, root = built
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        retriever.save(tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="dtype must be one of"):
        retriever.save(tmp_path / "new", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="first_stage must be one of"):
        retriever.save(tmp_path / "new", first_stage="ivf")
    assert not (tmp_path / "new").exists()
    loaded = SepsRetriever.load(root / "fp32", model)
    with pytest.raises(ValueError, match="already on disk"):
        loaded.save(tmp_path / "new")


def test_without_faiss_save_names_the_extra_and_writes_nothing(built, tmp_path, monkeypatch):
    _, _, retriever, _ = built
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'transformers-seps\[index\]'"):
        retriever.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_image_ids_must_match_the_images(built):
    model, processor, _, _ = built
    images, _ = gallery(2)
    with pytest.raises(ValueError, match="image_ids must hold one str or int per image"):
        SepsRetriever(model, processor).add_images(images, image_ids=["only-one"])


def test_an_index_of_another_format_is_refused(built, tmp_path):
    model, _, _, root = built
    copy = tmp_path / "copy"
    shutil.copytree(root / "fp32", copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ValueError, match="index version 99, written by another release"):
        SepsRetriever.load(copy, model)
    with pytest.raises(FileNotFoundError, match="no such index folder"):
        SepsRetriever.load(Path(tmp_path / "nowhere"), model)


# ---------------------------------------------------------------------------------------------------------------
# Building an index from a dataset split (examples/build_index.py)
# ---------------------------------------------------------------------------------------------------------------

SYNTHETIC_QUERIES = ["a red circle on the left", "a blue square", "two green triangles"]


def split_source(tiny_synthetic) -> GallerySource:
    args = IndexArguments(model="unused", output_dir="unused", data_root=str(tiny_synthetic), dataset="synthetic")
    return gallery_from_arguments(args)


def in_memory_retriever(model, processor, source: GallerySource, shortlist_size: int | None) -> SepsRetriever:
    retriever = SepsRetriever(model, processor, shortlist_size=shortlist_size)
    images = [Image.open(path).convert("RGB") for path in source.image_paths]
    retriever.add_images(images, source.dense_captions, source.image_ids)
    return retriever


def assert_same_search(loaded: SepsRetriever, expected: SepsRetriever) -> None:
    result, reference = loaded.search(SYNTHETIC_QUERIES, top_k=4), expected.search(SYNTHETIC_QUERIES, top_k=4)
    assert torch.equal(result.indices, reference.indices)
    torch.testing.assert_close(result.scores, reference.scores, atol=1e-5, rtol=0)


def test_a_split_builds_an_index_that_searches_like_the_in_memory_retriever(tiny_synthetic, tmp_path):
    model, processor = tiny_model_with_processor("paper")
    source = split_source(tiny_synthetic)
    assert len(source.image_ids) == 8 and source.dense_captions is not None
    manifest = build_index(model, processor, source, tmp_path / "index", shard_size=3, dtype=torch.float32)
    assert [entry["num_images"] for entry in manifest["shards"]] == [3, 3, 2]
    for shortlist_size in (None, 3):
        loaded = SepsRetriever.load(tmp_path / "index", model, shortlist_size=shortlist_size)
        assert loaded.image_ids == source.image_ids
        assert_same_search(loaded, in_memory_retriever(model, processor, source, shortlist_size))


def test_a_killed_build_resumes_without_re_encoding_its_finished_shards(tiny_synthetic, tmp_path, monkeypatch):
    model, processor = tiny_model_with_processor("paper")
    source = split_source(tiny_synthetic)
    directory = tmp_path / "index"
    build_index(model, processor, source, directory, shard_size=3, dtype=torch.float32)
    # The state a kill leaves while the last shard is written: no manifest, no last shard, a temporary file.
    (directory / MANIFEST_FILE).unlink()
    last = sorted(directory.glob("shard-*"))[-1]
    last.rename(directory / f".tmp-{last.name}")
    with pytest.raises(ValueError, match="not a finished index"):
        SepsRetriever.load(directory, model)
    finished = {path.name: path.stat().st_mtime_ns for path in directory.glob("shard-*")}
    encoded_batches = []
    original = indexing.encode_images
    monkeypatch.setattr(indexing, "encode_images", lambda *a: encoded_batches.append(len(a[2])) or original(*a))
    build_index(model, processor, source, directory, shard_size=3, dtype=torch.float32)
    assert encoded_batches == [2]  # only the last shard's two images
    assert {name: (directory / name).stat().st_mtime_ns for name in finished} == finished
    assert_same_search(SepsRetriever.load(directory, model), in_memory_retriever(model, processor, source, None))


def test_a_resumed_build_refuses_shards_of_other_images_or_models(tiny_synthetic, tmp_path):
    model, processor = tiny_model_with_processor("paper")
    source = split_source(tiny_synthetic)
    directory = tmp_path / "index"
    build_index(model, processor, source, directory, shard_size=3)
    (directory / MANIFEST_FILE).unlink()
    other, _ = tiny_model_with_processor("paper", seed=1)
    with pytest.raises(ValueError, match="another model's features"):
        build_index(other, processor, source, directory, shard_size=3)
    with pytest.raises(ValueError, match="holds shards of another build"):
        build_index(model, processor, source, directory, shard_size=4)


def copied_source(source: GallerySource, folder: Path) -> GallerySource:
    """`source` with its image files copied to `folder` (so that a test may damage one)."""
    folder.mkdir()
    paths = [Path(shutil.copy(path, folder / path.name)) for path in source.image_paths]
    return GallerySource(source.image_ids, paths, source.dense_captions)


def test_overwrite_replaces_an_index_only_once_the_new_one_is_complete(tiny_synthetic, tmp_path, monkeypatch):
    """Issue 24: --overwrite_output_dir builds the new index beside the old one; a build that fails midway leaves
    the old index whole and usable, the same command run again resumes and then replaces it."""
    old_model, processor = tiny_model_with_processor("paper")
    new_model, _ = tiny_model_with_processor("paper", seed=1)
    source = copied_source(split_source(tiny_synthetic), tmp_path / "images")
    directory = tmp_path / "index"
    build_index(old_model, processor, source, directory, shard_size=3, dtype=torch.float32)
    old_search = SepsRetriever.load(directory, old_model).search(SYNTHETIC_QUERIES, top_k=4)
    with pytest.raises(
        UsageError,
        match=r"holds a finished index of another model \(the weights differ .*\): pass "
        r"--overwrite_output_dir to replace it, or another --output_dir",
    ):
        build_index(new_model, processor, source, directory, shard_size=3)

    damaged = source.image_paths[4]  # in the second of three shards
    intact = damaged.read_bytes()
    damaged.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(RetrievalDataError, match=damaged.name):
        build_index(new_model, processor, source, directory, shard_size=3, dtype=torch.float32, overwrite=True)
    unchanged = SepsRetriever.load(directory, old_model).search(SYNTHETIC_QUERIES, top_k=4)
    assert torch.equal(unchanged.indices, old_search.indices) and torch.equal(unchanged.scores, old_search.scores)

    damaged.write_bytes(intact)
    encoded = []
    original = indexing.encode_images
    monkeypatch.setattr(indexing, "encode_images", lambda *a: encoded.append(len(a[2])) or original(*a))
    build_index(new_model, processor, source, directory, shard_size=3, dtype=torch.float32, overwrite=True)
    assert encoded == [3, 2]  # the first shard, finished before the failure, was kept
    assert_same_search(
        SepsRetriever.load(directory, new_model), in_memory_retriever(new_model, processor, source, None)
    )
    with pytest.raises(ValueError, match="encoded by another model"):
        SepsRetriever.load(directory, old_model)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "index"]  # no temporary folder left

    (directory / "notes.txt").write_text("a user's file")
    with pytest.raises(UsageError, match=r"holds files that are not an index's \(notes.txt\): --overwrite_output_dir"):
        build_index(old_model, processor, source, directory, shard_size=3, overwrite=True)
    assert (directory / MANIFEST_FILE).is_file()


def test_the_build_script_offers_to_overwrite_and_does(saved_models, tiny_synthetic, tmp_path, capsys):
    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "build_index.py"))["main"]
    official = SepsModel.from_pretrained(saved_models["official"]).eval()
    processor = SepsProcessor.from_pretrained(saved_models["official"])
    build_index(official, processor, split_source(tiny_synthetic), tmp_path / "index", shard_size=3)
    argv = ["--model", str(saved_models["paper"]), "--data_root", str(tiny_synthetic), "--dataset", "synthetic"]
    argv += ["--output_dir", str(tmp_path / "index"), "--shard_size", "3"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(
        f"build_index.py: error: --output_dir {tmp_path / 'index'} holds a finished index of another"
    )
    assert "config fields differ: variant 'official' in the index, 'paper' in the model" in error
    assert error.endswith("pass --overwrite_output_dir to replace it, or another --output_dir")
    manifest = main([*argv, "--overwrite_output_dir"])
    assert manifest["model"]["config"]["variant"] == "paper" and manifest["num_images"] == 8


def run_build_script(*arguments: str, processes: int = 1) -> subprocess.CompletedProcess:
    return run_example("build_index.py", *arguments, processes=processes)


@pytest.mark.slow
def test_two_processes_split_the_shards_and_give_the_index_of_one(saved_models, tiny_synthetic, tmp_path):
    model = SepsModel.from_pretrained(saved_models["paper"]).eval()
    processor = SepsProcessor.from_pretrained(saved_models["paper"])
    build_index(model, processor, split_source(tiny_synthetic), tmp_path / "index1", shard_size=3, dtype=torch.float32)
    result = run_build_script(
        "--model", str(saved_models["paper"]), "--data_root", str(tiny_synthetic), "--dataset", "synthetic",
        "--output_dir", str(tmp_path / "index2"), "--shard_size", "3", "--dtype", "float32", processes=2,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 images in 3 shard(s)" in result.stdout
    one, two = (
        SepsRetriever.load(tmp_path / name, model).search(SYNTHETIC_QUERIES, top_k=8) for name in ("index1", "index2")
    )
    assert torch.equal(two.indices, one.indices)
    torch.testing.assert_close(two.scores, one.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([], "give either --image_root"),
        (["--data_root", "{synthetic}"], "--data_root needs --dataset"),
        (["--image_root", "{tmp}/nowhere"], "--image_root"),
        (["--image_root", "{synthetic}/images", "--shard_size", "0"], "--shard_size must be a positive"),
        (["--image_root", "{synthetic}/images", "--append"], "holds no finished index to add to"),
        (["--image_root", "{synthetic}/images", "--append", "--overwrite_output_dir"], "pick one"),
    ],
)
def test_build_script_errors_are_one_line(saved_models, tiny_synthetic, tmp_path, capsys, arguments, message):
    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "build_index.py"))["main"]
    places = {"synthetic": str(tiny_synthetic), "tmp": str(tmp_path)}
    argv = ["--model", str(saved_models["paper"]), "--output_dir", str(tmp_path / "index")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *(argument.format(**places) for argument in arguments)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_bench_index_reports_the_disk_of_float16_tokens(tmp_path):
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sizes = {}
    for dtype in ("float16",):  # float32's disk: test_a_float16_index_ranks_like_the_float32_one
        result = subprocess.run(
            [
                sys.executable, "bench_index.py", "--sizes", "120", "--shortlist_sizes", "5", "10", "--queries", "2",
                "--shard_size", "50", "--dtype", dtype, "--output_dir", str(tmp_path / dtype), "--threads", "1",
            ],
            cwd=benchmarks, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        row = next(line for line in result.stdout.splitlines() if line.startswith("| 120 |"))
        sizes[dtype] = float(row.split("|")[2].split()[0])  # KB per image
        assert not list((tmp_path / dtype).iterdir())  # the benchmark deletes what it built
    # 197 x 512 tokens: 197 KB in float16, 394 KB in float32, plus the global vectors (2 KB each, in the shard and
    # in FAISS) and the headers.
    global_vectors_kb = 2 * 2 * SepsConfig().num_global_image_vectors
    assert 197 + global_vectors_kb <= sizes["float16"] <= 205 + global_vectors_kb


@pytest.mark.slow
def test_a_build_killed_for_real_resumes_from_its_finished_shards(saved_models, tiny_synthetic, tmp_path):
    model = SepsModel.from_pretrained(saved_models["paper"]).eval()
    processor = SepsProcessor.from_pretrained(saved_models["paper"])
    build_index(model, processor, split_source(tiny_synthetic), tmp_path / "whole", shard_size=1, dtype=torch.float32)
    script = str(Path(__file__).resolve().parents[1] / "examples" / "build_index.py")
    arguments = [
        sys.executable, script, "--model", str(saved_models["paper"]), "--data_root", str(tiny_synthetic),
        "--dataset", "synthetic", "--output_dir", str(tmp_path / "killed"), "--shard_size", "1", "--dtype", "float32",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    directory = tmp_path / "killed"
    build = subprocess.Popen(arguments, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # SIGKILL as soon as the first of the 8 one-image shards is on disk.
        while build.poll() is None and not any(directory.glob("shard-*")):
            time.sleep(0.002)
        build.kill()
        build.wait(timeout=60)
    finally:
        if build.poll() is None:
            build.kill()
    assert build.returncode == -signal.SIGKILL, "the build ended before its first shard was on disk"
    assert not (directory / MANIFEST_FILE).exists()
    finished = {path.name: path.stat().st_mtime_ns for path in directory.glob("shard-*")}
    assert 1 <= len(finished) < 8
    with pytest.raises(ValueError, match="not a finished index"):
        SepsRetriever.load(directory, model)
    rerun = subprocess.run(arguments, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "8 images in 8 shard(s)" in rerun.stdout
    # The shards finished before the kill were kept, not encoded and written again.
    assert {name: (directory / name).stat().st_mtime_ns for name in finished} == finished
    assert not list(directory.glob(".tmp-*"))
    whole, resumed = (
        SepsRetriever.load(tmp_path / name, model).search(SYNTHETIC_QUERIES, top_k=8) for name in ("whole", "killed")
    )
    assert torch.equal(resumed.indices, whole.indices)
    torch.testing.assert_close(resumed.scores, whole.scores, atol=1e-5, rtol=0)
