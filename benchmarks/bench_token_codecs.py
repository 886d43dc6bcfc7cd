"""What the storage of an index's SEPS tokens costs: disk per image, two-stage recall and decode time, per storage
dtype (`SepsRetriever.save(dtype=...)`, `examples/build_index.py --dtype`: float32, float16, int8).

On trained models and a real split (several models, e.g. training seeds: mean and standard deviation), each
dtype's index is written as `SepsRetriever.save` writes it and searched as `SepsRetriever.load` searches it (the
FAISS shortlist, then SEPS re-ranking of the shortlisted rows read from the shards): text-to-image R@1/R@10 beside
float32's, and bytes per image. Then, at ViT-224 shapes (random features, 197 x 512 tokens, random weights, no
dense captions), bytes per image, how far SEPS scores move from float32's (mean and max abs difference, beside the
scores' own standard deviation) and the time to read and decode a shortlist's rows from the memory-mapped shards
(page cache warm). Indexes are written under `--output_dir` and deleted.

    python benchmarks/bench_token_codecs.py --models runs/bench-demo/0-seed0/best --data_root data/synthetic \\
        [--threads 1] [--results_file docs/results/NAME.json]
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_index import random_tokens
from bench_similarity import build_model
from results import Column, Recorder, Table, add_results_argument

from transformers_seps import SepsModel, SepsProcessor
from transformers_seps.index import STORAGE_DTYPES, StoredGallery, finalize_index, model_signature, write_shard
from transformers_seps.metrics import retrieval_metrics
from transformers_seps.retrieval import global_image_embeds, rerank_shortlists
from transformers_seps.train.allocator import reuse_freed_cpu_memory
from transformers_seps.train.data import load_retrieval_split
from transformers_seps.train.evaluation import encode_split

SHARD_SIZE = 1024
RECALL_COLUMNS = [
    Column("dtype", "stored tokens"),
    Column("kb_per_image", "KB per image (shard)", "{:.1f}"),
    Column("t2i_r1", "t2i R@1", "{:.1f}"),
    Column("t2i_r10", "t2i R@10", "{:.1f}"),
    Column("t2i_r10_change", "t2i R@10 - float32's", "{:+.2f}"),
]
SHAPES_COLUMNS = [
    Column("dtype", "stored tokens"),
    Column("kb_per_image", "KB per image (shard)", "{:.1f}"),
    Column("mean_abs_difference", "mean abs score difference", "{:.1e}"),
    Column("max_abs_difference", "max abs score difference", "{:.1e}"),
    Column("decode_ms", "ms to read a shortlist's rows", "{:.2f}"),
]


def write_index(
    directory: Path,
    model: SepsModel,
    image_embeds: torch.Tensor,
    dense_embeds: torch.Tensor | None,
    dense_mask: torch.Tensor | None,
    dtype: str,
    first_stage: str = "exact",
) -> StoredGallery:
    """An index of the encoded images in `directory` (as `SepsRetriever.save` writes it), opened."""
    directory.mkdir(parents=True)
    signature = model_signature(model)
    global_embeds = global_image_embeds(model, image_embeds)
    for start in range(0, image_embeds.shape[0], SHARD_SIZE):
        rows = slice(start, start + SHARD_SIZE)
        ids = list(range(start, min(start + SHARD_SIZE, image_embeds.shape[0])))
        dense = None if dense_embeds is None else dense_embeds[rows]
        mask = None if dense_mask is None else dense_mask[rows]
        tokens = (image_embeds[rows], global_embeds[rows], dense, mask)
        write_shard(directory, start, ids, *tokens, STORAGE_DTYPES[dtype], signature)
    finalize_index(directory, signature, first_stage)
    return StoredGallery(directory, model)


def kb_per_image(directory: Path, num_images: int) -> float:
    return sum(path.stat().st_size for path in directory.glob("shard-*")) / num_images / 1024


def two_stage_recall(model: SepsModel, gallery: StoredGallery, encoded, shortlist_size: int) -> dict[str, float]:
    """t2i R@1 / R@10 of the stored gallery's two-stage search (images outside a shortlist rank below it)."""
    text_global = model.global_text_embeds(encoded.text_embeds, encoded.text_mask)
    shortlists = gallery.shortlist(text_global, shortlist_size)
    result = rerank_shortlists(model, shortlists, gallery.rows, encoded.text_embeds, encoded.text_mask)
    similarity = torch.full((len(shortlists), len(gallery)), result.scores.min().item() - 1)
    similarity.scatter_(1, result.indices, result.scores)
    metrics = retrieval_metrics(similarity.t(), torch.as_tensor(encoded.caption_to_image))
    return {"t2i_r1": metrics["t2i_r1"], "t2i_r10": metrics["t2i_r10"]}


def trained_rows(args, root: Path) -> tuple[list[dict], str]:
    split = load_retrieval_split(args.data_root, args.dataset, args.split, args.image_root)
    per_dtype: dict[str, list[dict]] = {dtype: [] for dtype in args.dtypes}
    for number, folder in enumerate(args.models):
        model = SepsModel.from_pretrained(folder).eval()
        processor = SepsProcessor.from_pretrained(folder)
        encoded = encode_split(model, processor, split, use_dense=split.has_dense_captions, progress=False)
        for dtype in args.dtypes:
            directory = root / f"model{number}-{dtype}"
            gallery = write_index(
                directory, model, encoded.image_embeds, encoded.dense_embeds, encoded.dense_mask, dtype
            )
            recall = two_stage_recall(model, gallery, encoded, args.shortlist_size)
            per_dtype[dtype].append({"kb_per_image": kb_per_image(directory, len(gallery)), **recall})
            shutil.rmtree(directory)
    reference = per_dtype[args.dtypes[0]]
    rows = []
    for dtype, measured in per_dtype.items():
        row = {"dtype": dtype, **{key: [m[key] for m in measured] for key in ("kb_per_image", "t2i_r1", "t2i_r10")}}
        row["t2i_r10_change"] = [m["t2i_r10"] - r["t2i_r10"] for m, r in zip(measured, reference, strict=True)]
        rows.append(row)
    notes = (
        f"{args.dataset}/{args.split}: {split.num_images} images, {split.num_captions} caption queries, dense captions "
        f"{'on' if split.has_dense_captions else 'off'}; shortlist {args.shortlist_size} re-ranked (exact first "
        f"stage); {len(args.models)} model(s){', mean ± standard deviation' if len(args.models) > 1 else ''}."
    )
    return rows, notes


def shapes_rows(args, root: Path) -> tuple[list[dict], float]:
    """ViT-224 shapes, random features: disk, score error against float32 and decode time, per dtype; and the
    standard deviation of the float32 scores."""
    model = build_model("paper", 512)
    config = model.config
    generator = torch.Generator().manual_seed(0)
    tokens = config.num_patches + int(config.vision_cls_token)
    images = random_tokens(generator, args.random_images, tokens, config.embed_dim)
    words = random_tokens(generator, args.random_captions, 16, config.embed_dim)
    word_mask = torch.ones(args.random_captions, 16, dtype=torch.long)
    rng = np.random.default_rng(0)
    reference = None
    rows = []
    for dtype in args.dtypes:
        directory = root / f"random-{dtype}"
        gallery = write_index(directory, model, images, None, None, dtype)
        stored, _, _ = gallery.rows(torch.arange(len(gallery)))
        scores = model.similarity(stored.float(), words, word_mask)  # (N_img, N_txt)
        reference = scores if reference is None else reference
        shortlists = [torch.from_numpy(rng.choice(len(gallery), args.shortlist_size, replace=False)) for _ in range(51)]
        gallery.rows(shortlists[0])  # warms up
        begin = time.perf_counter()
        for shortlist in shortlists[1:]:
            gallery.rows(shortlist)
        decode_ms = 1000 * (time.perf_counter() - begin) / (len(shortlists) - 1)
        rows.append(
            {
                "dtype": dtype,
                "kb_per_image": kb_per_image(directory, len(gallery)),
                "mean_abs_difference": (scores - reference).abs().mean().item(),
                "max_abs_difference": (scores - reference).abs().max().item(),
                "decode_ms": decode_ms,
            }
        )
        del gallery, stored
        shutil.rmtree(directory)
    return rows, reference.std().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["runs/demo/best"], help="trained model folders or hub ids")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_root", default="data/synthetic")
    parser.add_argument("--image_root", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(STORAGE_DTYPES), default=["float32", "float16", "int8"])
    parser.add_argument("--shortlist_size", type=int, default=50)
    parser.add_argument("--random_images", type=int, default=1000, help="ViT-224-shaped random images (0: none)")
    parser.add_argument("--random_captions", type=int, default=50)
    parser.add_argument(
        "--output_dir", default=None, help="where the indexes are written (deleted); default: a temp dir"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_results_argument(parser)
    args = parser.parse_args()
    if args.dtypes[0] != "float32":
        parser.error("--dtypes starts with float32: the reference the others are compared with")
    recorder = Recorder(args.results_file)
    if args.threads:
        torch.set_num_threads(args.threads)

    reuse_freed_cpu_memory()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(dir=args.output_dir) as temporary:
        root = Path(temporary)
        rows, notes = trained_rows(args, root)
        tables = {"main": Table(RECALL_COLUMNS, rows)}
        if args.random_images:
            shapes, spread = shapes_rows(args, root)
            tables["shapes"] = Table(SHAPES_COLUMNS, shapes)
            notes += (
                f" ViT-224 shapes: {args.random_images} random images of 197 x 512 tokens, {args.random_captions} "
                f"random captions (scores' standard deviation {spread:.2g}), shortlists of {args.shortlist_size} rows."
            )
    print(f"{notes} {torch.get_num_threads()} threads.")
    for table in tables.values():
        print(table.markdown())
    recorder.write(tables, notes=notes)


if __name__ == "__main__":
    main()
