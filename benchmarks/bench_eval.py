"""Time and memory of the full Flickr30K-shaped evaluation scoring, and how cost grows with the gallery.

Part 1 (each variant in a fresh subprocess, so peak memory is its own): the exhaustive 1000 x 5000 similarity
matrix at ViT-224 shapes (C = 512, 196 patches + [CLS], 16-token captions, 128-token dense captions, one per
image, honest pairing), random weights, through `transformers_seps.train.evaluation.score_split`; and the
reference loop (tests/reference_seps.py; for the official variant shaped as the SEPS authors' loop, one caption
at a time against all images) on a subset of captions in the same run, like for like: the caption branch per
pair, the dense branch once per image (`f(I_j, D_j)`, the honest pairing) in both. The reference's time for the
whole matrix is extrapolated from the subset: caption part x (captions / subset) + its dense part.

Part 2: per-query time of exhaustive scoring against the two-stage search (mean-pooled cosine shortlist, then
SEPS re-ranking of `--shortlist` images) as the gallery grows.

With `--dtype bfloat16` the scoring runs `similarity(dtype=torch.bfloat16)` (the reference loop in float32).
`--results_file docs/results/NAME.json` also writes the tables "main" (part 1) and "scaling" (part 2) for the docs
(`benchmarks/results.py`).

    .venv/bin/python benchmarks/bench_eval.py [--images 1000 --captions 5000] [--skip_scaling] [--dtype bfloat16]
        [--results_file docs/results/full_evaluation.json]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_similarity import DTYPES, build_model, random_captions
from results import Column, Recorder, Table, add_results_argument

from transformers_seps.retrieval import shortlist_and_rerank
from transformers_seps.train.allocator import reuse_freed_cpu_memory
from transformers_seps.train.evaluation import EncodedSplit, score_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_seps import reference_similarity  # noqa: E402

EMBED_DIM = 512


def random_split(num_images: int, num_captions: int, caption_tokens: int, dense_tokens: int) -> EncodedSplit:
    """Random embeddings of Flickr30K shapes: captions of 8..`caption_tokens` tokens, one dense caption per image."""
    generator = torch.Generator().manual_seed(0)
    text_embeds, text_mask = random_captions(num_captions, 8, caption_tokens, EMBED_DIM, generator)
    return EncodedSplit(
        image_embeds=torch.randn(num_images, 197, EMBED_DIM, generator=generator),
        text_embeds=text_embeds,
        text_mask=text_mask,
        dense_embeds=torch.randn(num_images, dense_tokens, EMBED_DIM, generator=generator),
        dense_mask=torch.ones(num_images, dense_tokens, dtype=torch.long),
        caption_to_image=np.arange(num_captions) % num_images,
    )


def measure_variant(variant: str, args: argparse.Namespace) -> dict:
    """Runs in its own process: exhaustive scoring time and peak memory, and the reference loop's rate."""
    reuse_freed_cpu_memory()
    dtype = getattr(torch, args.dtype)
    model = build_model(variant, EMBED_DIM)
    split = random_split(args.images, args.captions, args.caption_tokens, args.dense_tokens)
    start = time.perf_counter()
    similarity = score_split(model, split, "image", args.images_per_block, progress=False, dtype=dtype)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    subset = slice(0, args.reference_captions)
    captions = split.image_embeds, split.text_embeds[subset], split.text_mask[subset]
    with torch.no_grad():
        start = time.perf_counter()
        reference = reference_similarity(model, *captions, split.dense_embeds, split.dense_mask)
        reference_seconds = time.perf_counter() - start
        dense_seconds = 0.0
        if variant == "official":  # the dense branch, f(I_j, D_j), runs once per image: not scaled with captions
            start = time.perf_counter()
            reference_similarity(model, *captions)
            dense_seconds = max(reference_seconds - (time.perf_counter() - start), 0.0)
    reference_total = (reference_seconds - dense_seconds) * args.captions / args.reference_captions + dense_seconds
    return {
        "variant": variant,
        "seconds": seconds,
        "pairs_per_second": args.images * args.captions / seconds,
        "peak_memory_gb": peak_gb,
        "reference_minutes": reference_total / 60,
        "speedup": reference_total / seconds,
        "max_abs_difference": float(np.abs(similarity[:, subset] - reference.numpy()).max()),
    }


def scaling(args: argparse.Namespace) -> list[dict]:
    """Per-query seconds of exhaustive and two-stage scoring for growing galleries (float32)."""
    model = build_model("paper", EMBED_DIM)
    rows = []
    for gallery in args.gallery_sizes:
        split = random_split(gallery, args.queries, args.caption_tokens, args.dense_tokens)
        with torch.no_grad():
            start = time.perf_counter()
            model.similarity(
                split.image_embeds, split.text_embeds, split.text_mask, split.dense_embeds, split.dense_mask
            )
            exhaustive = (time.perf_counter() - start) / args.queries
            start = time.perf_counter()
            shortlist_and_rerank(
                model, split.image_embeds, split.text_embeds, split.text_mask, min(args.shortlist, gallery),
                split.dense_embeds, split.dense_mask,
            )  # fmt: skip
            two_stage = (time.perf_counter() - start) / args.queries
        rows.append(
            {"gallery": gallery, "exhaustive_ms_per_query": 1e3 * exhaustive, "two_stage_ms_per_query": 1e3 * two_stage}
        )
    return rows


MAIN_COLUMNS = [
    Column("variant"),
    Column("seconds", "time (s)", "{:,.0f}"),
    Column("pairs_per_second", "pairs/s", "{:,.0f}"),
    Column("peak_memory_gb", "peak memory (GB)", "{:.2f}"),
    Column("reference_minutes", "reference loop, extrapolated (min)", "{:.1f}"),
    Column("speedup", "speed-up", "{:.1f}x"),
    Column("max_abs_difference", "max abs diff", "{:.1e}"),
]
SCALING_COLUMNS = [
    Column("gallery", "gallery images"),
    Column("exhaustive_ms_per_query", "exhaustive (ms per query)", "{:.0f}"),
    Column("two_stage_ms_per_query", "two-stage (ms per query)", "{:.0f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=5000)
    parser.add_argument("--caption_tokens", type=int, default=16)
    parser.add_argument("--dense_tokens", type=int, default=128)
    parser.add_argument("--images_per_block", type=int, default=25)
    parser.add_argument("--reference_captions", type=int, default=10)
    parser.add_argument("--gallery_sizes", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--skip_scaling", action="store_true")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="scoring dtype of part 1")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: measure one variant and print JSON
    add_results_argument(parser)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure_variant(args.variant, args)))
        return
    recorder = Recorder(args.results_file)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}; {args.images} images x "
        f"{args.captions} captions of 8-{args.caption_tokens} tokens, dense captions on (honest pairing); reference "
        f"loop on {args.reference_captions} captions"
    )
    results = []
    for variant in ("official", "paper"):
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        results.append(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout))
    tables = {"main": Table(MAIN_COLUMNS, results)}
    print(tables["main"].markdown())
    if not args.skip_scaling:
        print(f"\nper-query cost, paper variant, {args.queries} queries, shortlist {args.shortlist}")
        tables["scaling"] = Table(SCALING_COLUMNS, scaling(args))
        print(tables["scaling"].markdown())
    recorder.write(tables)


if __name__ == "__main__":
    main()
