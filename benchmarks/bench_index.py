"""A gallery index on disk at ViT-224 shapes: disk and memory per image, build time, and the latency of a
two-stage search (FAISS shortlist + SEPS re-ranking of the shortlist read from the memory-mapped shards).

Random features (197 x 512 tokens per image, paper variant, random weights; no dense captions unless
`--dense_tokens`), written as `SepsRetriever.save` writes them (`transformers_seps.index`), then opened as
`SepsRetriever.load` opens them. Queries are random 16-token captions. Each gallery size is built, measured and
deleted in turn (10k images: 2 GB in float16). What the storage dtype costs in recall and score error:
`benchmarks/bench_token_codecs.py`. `--results_file docs/results/NAME.json` also writes the table for the docs
(`benchmarks/results.py`).

    .venv/bin/python benchmarks/bench_index.py --sizes 10000 30000 --output_dir /tmp/bench-index \
        [--results_file docs/results/index.json]
"""

import argparse
import multiprocessing
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from bench_similarity import build_model
from results import Column, Recorder, Table, add_results_argument

from transformers_seps.index import STORAGE_DTYPES, StoredGallery, finalize_index, model_signature, write_shard
from transformers_seps.retrieval import global_image_embeds, rerank_shortlists
from transformers_seps.train.allocator import reuse_freed_cpu_memory


def resident_megabytes() -> float:
    """Current resident set size (anonymous and file-backed pages), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def loaded_index_megabytes(directory: Path) -> float:
    """Resident memory that opening the index adds, measured in a fresh process (the FAISS vectors, image ids
    and memory maps; the shards' pages are read only when searched)."""
    torch.set_num_threads(1)
    model = build_model("paper", 512)  # the same seeded model as the parent's
    before = resident_megabytes()
    gallery = StoredGallery(directory, model)
    after = resident_megabytes()
    del gallery
    return after - before


def random_tokens(generator: torch.Generator, count: int, length: int, embed_dim: int) -> torch.Tensor:
    return torch.randn(count, length, embed_dim, generator=generator) * 0.5


def build(model, directory: Path, num_images: int, args) -> float:
    """Write a gallery of random images as shards and finalize the index; returns the seconds it took (the random
    features excluded)."""
    config = model.config
    tokens = config.num_patches + int(config.vision_cls_token)
    signature = model_signature(model)
    generator = torch.Generator().manual_seed(num_images)
    seconds = 0.0
    for start in range(0, num_images, args.shard_size):
        count = min(args.shard_size, num_images - start)
        image_embeds = random_tokens(generator, count, tokens, config.embed_dim)
        dense = mask = None
        if args.dense_tokens:
            dense = random_tokens(generator, count, args.dense_tokens, config.embed_dim)
            mask = torch.ones(count, args.dense_tokens, dtype=torch.long)
        begin = time.perf_counter()
        global_embeds = global_image_embeds(model, image_embeds)
        ids = list(range(start, start + count))
        write_shard(
            directory, start, ids, image_embeds, global_embeds, dense, mask, STORAGE_DTYPES[args.dtype], signature
        )
        seconds += time.perf_counter() - begin
    begin = time.perf_counter()
    finalize_index(directory, signature, args.first_stage)
    return seconds + time.perf_counter() - begin


def query_latencies(model, gallery: StoredGallery, shortlist_size: int, args) -> np.ndarray:
    """Seconds per query of the two-stage search: global embedding, FAISS shortlist, rows read, SEPS re-ranking."""
    generator = torch.Generator().manual_seed(shortlist_size)
    words = random_tokens(generator, args.queries + 1, args.caption_tokens, model.config.embed_dim)
    mask = torch.ones(args.queries + 1, args.caption_tokens, dtype=torch.long)
    seconds = []
    for query in range(args.queries + 1):  # the first one warms up
        begin = time.perf_counter()
        text, text_mask = words[query : query + 1], mask[query : query + 1]
        shortlist = gallery.shortlist(model.global_text_embeds(text, text_mask), shortlist_size)
        rerank_shortlists(model, shortlist, gallery.rows, text, text_mask)
        seconds.append(time.perf_counter() - begin)
    return np.array(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="gallery sizes")
    parser.add_argument("--output_dir", default="/tmp/bench-index", help="where the indexes are built (deleted)")
    parser.add_argument("--shortlist_sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--queries", type=int, default=50, help="timed queries per shortlist size")
    parser.add_argument("--caption_tokens", type=int, default=16)
    parser.add_argument("--dense_tokens", type=int, default=0, help="dense-caption tokens per image (0: none)")
    parser.add_argument("--shard_size", type=int, default=1024)
    parser.add_argument("--dtype", choices=tuple(STORAGE_DTYPES), default="float16")
    parser.add_argument("--first_stage", choices=("exact", "hnsw"), default="exact")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_results_argument(parser)
    args = parser.parse_args()
    recorder = Recorder(args.results_file)
    if args.threads:
        torch.set_num_threads(args.threads)

    reuse_freed_cpu_memory()
    torch.set_grad_enabled(False)
    model = build_model("paper", 512)
    print(
        f"{args.dtype} tokens, {args.first_stage} first stage, dense tokens {args.dense_tokens}, "
        f"{torch.get_num_threads()} threads, {args.queries} queries"
    )
    latency_keys = {size: f"shortlist_{size}" for size in args.shortlist_sizes}
    columns = [
        Column("images", "images", "{:,}"),
        Column("disk_kb", "disk per image (KB)", "{:.0f}"),
        Column("memory_kb", "memory per image (KB)", "{:.1f}"),
        Column("build_seconds", "build (s)", "{:.0f}"),
        *(Column(key, f"shortlist {size} p50 / p95 (ms)") for size, key in latency_keys.items()),
    ]
    table = Table(columns)
    for num_images in args.sizes:
        directory = Path(args.output_dir) / f"index-{num_images}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        try:
            seconds = build(model, directory, num_images, args)
            disk = sum(path.stat().st_size for path in directory.iterdir())
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                memory = pool.apply(loaded_index_megabytes, (directory,))
            gallery = StoredGallery(directory, model)
            row = {
                "images": num_images,
                "disk_kb": disk / num_images / 1024,
                "memory_kb": memory * 1024 / num_images,
                "build_seconds": seconds,
            }
            for size, key in latency_keys.items():
                times = 1000 * query_latencies(model, gallery, size, args)
                row[key] = f"{np.percentile(times, 50):.0f} / {np.percentile(times, 95):.0f}"
            table.rows.append(row)
            del gallery
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    print(table.markdown())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the process: {peak:.0f} MB")
    recorder.write({"main": table})


if __name__ == "__main__":
    main()
