"""Pairs per second of `SepsModel.similarity` against a loop shaped as the SEPS authors' (one caption at a time,
all images batched, their operations: `official_caption_loop` in tests/reference_seps.py), like for like.

Flickr30K / ViT-224 shapes: embed 512, 196 patches + [CLS], captions of 8-16 tokens, 128-token dense captions
(one per image), random weights. Rounds alternate the loop and `similarity` in one process; each rate is the
median over the rounds. Rows:

- `<variant> caption branch`: f(I, T) of every pair (official), S(I, T) without dense captions (paper: there is
  no authors' code of this variant; the loop is our reference).
- `official dense branch`: the authors compute f(I_j, D_gt(i)) for every PAIR (a 128-token caption branch, rate
  in pairs/s); `similarity` computes the honest f(I_j, D_j) once per IMAGE (time per image).
- `paper with dense captions`: the dense caption steers every pair's selection, so both run per pair.

`--dtype bfloat16` runs `similarity(dtype=torch.bfloat16)`; the loop stays float32, so the difference is the
bfloat16 path's error. `--profile` prints where `similarity` spends its time on the caption branch.
`--floor` prints how far `similarity` is from this machine's floor on the official caption branch: the
multiply-adds per pair of its operations (counted from the shapes) at the fp32 GEMM rate measured here on the
patch-word product's shape; the rest of the time goes to gathers and element-wise passes (docs/speed.md).
`--chunk_sizes A B ... [--thread_counts 1 2]` instead times `similarity` on the official caption branch for each
block size and thread count, in alternating rounds (the knobs of docs/speed.md), and exits.
`--results_file docs/results/NAME.json` also writes the tables (`benchmarks/results.py`): "main", "dense" and,
with `--floor`, "floor" and "floor_rate"; with `--chunk_sizes`, "main" is the knob table.

    .venv/bin/python benchmarks/bench_similarity.py [--images 128 --captions 64 --reference_captions 16]
        [--rounds 5] [--threads 2] [--dtype bfloat16] [--profile] [--floor]
        [--chunk_sizes 64 256 1024 --thread_counts 1 2] [--results_file docs/results/similarity_speed.json]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, ViTConfig

from transformers_seps import SepsConfig, SepsModel
from transformers_seps.train.allocator import reuse_freed_cpu_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_seps import official_caption_loop, reference_similarity  # noqa: E402
from results import Column, Recorder, Table, add_results_argument  # noqa: E402

DTYPES = ("float32", "bfloat16")


def build_model(variant: str, embed_dim: int) -> SepsModel:
    vision = ViTConfig(
        hidden_size=embed_dim,
        num_hidden_layers=1,
        num_attention_heads=8,
        intermediate_size=64,
        image_size=224,
        patch_size=16,
    )
    text = BertConfig(hidden_size=embed_dim, num_hidden_layers=1, num_attention_heads=8, intermediate_size=64)
    torch.manual_seed(0)
    return SepsModel(SepsConfig(vision_config=vision, text_config=text, embed_dim=embed_dim, variant=variant)).eval()


def random_captions(
    count: int, min_tokens: int, max_tokens: int, embed_dim: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, max_tokens, C) embeddings and their masks, each caption min_tokens..max_tokens real tokens."""
    lengths = torch.randint(min_tokens, max_tokens + 1, (count,), generator=generator)
    embeds = torch.randn(count, max_tokens, embed_dim, generator=generator)
    return embeds, (torch.arange(max_tokens) < lengths[:, None]).long()


def seconds(function) -> tuple[object, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def interleaved(functions: dict, rounds: int) -> tuple[dict, dict]:
    """Last results and median seconds of each function, run in alternating rounds (the load hits all alike)."""
    times = {name: [] for name in functions}
    results = {}
    for _ in range(rounds):
        for name, function in functions.items():
            results[name], elapsed = seconds(function)
            times[name].append(elapsed)
    return results, {name: statistics.median(values) for name, values in times.items()}


def profile_table(function, rows: int = 12) -> str:
    """torch.profiler's table of the operators `function` spends the most time in (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    function()  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as recorded:
        function()
    return recorded.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows)


def knob_table(images: torch.Tensor, texts: torch.Tensor, text_mask: torch.Tensor, args: argparse.Namespace) -> Table:
    """Pairs/s of `similarity` on the official caption branch for each block size and thread count."""
    model = build_model("official", args.embed_dim)
    settings = [
        (chunk, threads) for threads in args.thread_counts or [torch.get_num_threads()] for chunk in args.chunk_sizes
    ]

    def timed(chunk: int, threads: int):
        torch.set_num_threads(threads)
        return model.similarity(images, texts, text_mask, chunk_size=chunk)

    with torch.no_grad():
        timed(args.chunk_sizes[0], torch.get_num_threads())  # warm-up
        _, median = interleaved({setting: lambda setting=setting: timed(*setting) for setting in settings}, args.rounds)
    columns = [Column("chunk_size"), Column("threads"), Column("pairs_per_second", "pairs/s", "{:,.0f}")]
    pairs = images.shape[0] * texts.shape[0]
    rows = [
        {"chunk_size": chunk, "threads": threads, "pairs_per_second": pairs / median[chunk, threads]}
        for chunk, threads in settings
    ]
    return Table(columns, rows)


def multiply_adds_per_pair(config: SepsConfig, words: float) -> dict[str, float]:
    """Multiply-adds per (image, caption) pair of the matrix products of `similarity` on the official caption
    branch, by step, for captions of `words` tokens (per-image work, done once per image, left out)."""
    patches, dim = config.num_patches, config.embed_dim
    kept, tokens = config.num_kept_patches, config.num_aggregated_patches
    return {
        "selection (patches x caption)": patches * dim,
        "patches x words": patches * dim * words,
        "kept tokens x words (weights x patch-words)": tokens * kept * words,
        "kept tokens' norms (weights x kept Gram block)": tokens * kept * kept,
        "fused token (dots and norm)": patches * (words + patches),
        "[CLS] x words": dim * words,
    }


def gemm_rate(rows: int, dim: int, columns: int, rounds: int) -> float:
    """Multiply-adds per second of a float32 (rows, dim) @ (dim, columns) product, median of `rounds`."""
    left, right = torch.randn(rows, dim), torch.randn(dim, columns)
    left @ right  # warm-up
    times = [seconds(lambda: left @ right)[1] for _ in range(max(rounds, 5))]
    return rows * dim * columns / statistics.median(times)


def floor_tables(config: SepsConfig, words: float, measured_pairs_per_second: float, rounds: int) -> dict[str, Table]:
    """What the official caption branch's multiply-adds would cost at the GEMM rate of this machine, and the
    share of that floor `similarity` reaches: the multiply-adds by step ("floor") and the rates ("floor_rate")."""
    counts = multiply_adds_per_pair(config, words)
    total = sum(counts.values())
    # The patch-word product of a block of 8 images x 64 captions, the largest GEMM of the scoring.
    rate = gemm_rate(8 * config.num_patches, config.embed_dim, round(64 * words), rounds)
    floor = rate / total
    steps = [{"step": step, "multiply_adds": count / 1e6} for step, count in [*counts.items(), ("total", total)]]
    step_columns = [Column("step"), Column("multiply_adds", "multiply-adds per pair (M)", "{:.3f}")]
    rate_columns = [
        Column("threads", "torch threads"),
        Column("words", "words per caption", "{:.1f}"),
        Column("gemm_rate", "GEMM rate (G multiply-adds/s)", "{:.1f}"),
        Column("floor", "floor (pairs/s)", "{:,.0f}"),
        Column("similarity", "similarity (pairs/s)", "{:,.0f}"),
        Column("share", "share of the floor (%)", "{:.0f}"),
    ]
    rates = {
        "threads": torch.get_num_threads(),
        "words": words,
        "gemm_rate": rate / 1e9,
        "floor": floor,
        "similarity": measured_pairs_per_second,
        "share": 100 * measured_pairs_per_second / floor,
    }
    return {"floor": Table(step_columns, steps), "floor_rate": Table(rate_columns, [rates])}


def ratio_row(label: str, results: dict, median: dict, pairs: int, reference_pairs: int, subset: slice) -> dict:
    """A table row: `similarity`'s pairs/s ("ours") against the loop's ("loop"), the ratio, and the largest score
    difference on the captions both scored."""
    fast, slow = pairs / median["ours"], reference_pairs / median["loop"]
    difference = (results["ours"][:, subset] - results["loop"]).abs().max().item()
    return {"scoring": label, "similarity": fast, "loop": slow, "speedup": fast / slow, "max_abs_diff": difference}


MAIN_COLUMNS = [
    Column("scoring"),
    Column("similarity", "similarity (pairs/s)", "{:,.0f}"),
    Column("loop", "authors-shaped loop (pairs/s)", "{:,.0f}"),
    Column("speedup", "speed-up", "{:.1f}x"),
    Column("max_abs_diff", "max abs diff", "{:.1e}"),
]
DENSE_COLUMNS = [
    Column("scoring"),
    Column("similarity_ms_per_image", "similarity, once per image (ms per image)", "{:.2f}"),
    Column("loop", "authors-shaped loop, every pair (pairs/s)", "{:,.0f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--captions", type=int, default=64)
    parser.add_argument("--reference_captions", type=int, default=16, help="captions scored by the slow loop")
    parser.add_argument("--min_caption_tokens", type=int, default=8)
    parser.add_argument("--caption_tokens", type=int, default=16, help="the longest caption")
    parser.add_argument("--dense_tokens", type=int, default=128)
    parser.add_argument("--embed_dim", type=int, default=512)
    parser.add_argument("--chunk_size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="scoring dtype of similarity()")
    parser.add_argument("--profile", action="store_true", help="profile similarity() on the caption branch")
    parser.add_argument("--floor", action="store_true", help="share of this machine's floor (official, caption)")
    parser.add_argument("--chunk_sizes", type=int, nargs="+", help="time these block sizes instead (knobs)")
    parser.add_argument("--thread_counts", type=int, nargs="+", help="with --chunk_sizes: these thread counts")
    add_results_argument(parser)
    args = parser.parse_args()
    recorder = Recorder(args.results_file)
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)

    reuse_freed_cpu_memory()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 197, args.embed_dim, generator=generator)
    texts, text_mask = random_captions(
        args.captions, args.min_caption_tokens, args.caption_tokens, args.embed_dim, generator
    )
    dense = torch.randn(args.images, args.dense_tokens, args.embed_dim, generator=generator)
    dense_mask = torch.ones(args.images, args.dense_tokens, dtype=torch.long)
    if args.chunk_sizes:
        print(
            f"torch {torch.__version__}; {args.images} images x {args.captions} captions of "
            f"{args.min_caption_tokens}-{args.caption_tokens} tokens, {args.rounds} alternating rounds, median"
        )
        knobs = knob_table(images, texts, text_mask, args)
        print(knobs.markdown())
        recorder.write({"main": knobs})
        return
    subset = slice(0, args.reference_captions)
    reference_pairs, pairs = args.images * args.reference_captions, args.images * args.captions

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}; {args.images} images x "
        f"{args.captions} captions of {args.min_caption_tokens}-{args.caption_tokens} tokens (loop: "
        f"{args.reference_captions} captions), {args.rounds} alternating rounds, median"
    )
    tables = {"main": Table(MAIN_COLUMNS), "dense": Table(DENSE_COLUMNS)}
    profiles = []
    for variant in ("official", "paper"):
        model = build_model(variant, args.embed_dim)
        with torch.no_grad():
            model.similarity(images[:2], texts[:2], text_mask[:2], dense[:2], dense_mask[:2], dtype=dtype)  # warm-up
            results, median = interleaved(
                {
                    "loop": lambda model=model: reference_similarity(model, images, texts[subset], text_mask[subset]),
                    "ours": lambda model=model: model.similarity(
                        images, texts, text_mask, chunk_size=args.chunk_size, dtype=dtype
                    ),
                },
                args.rounds,
            )
            caption_row = ratio_row(f"{variant} caption branch", results, median, pairs, reference_pairs, subset)
            tables["main"].rows.append(caption_row)
            if variant == "official" and args.floor:
                words = text_mask.sum(dim=1).float().mean().item()
                tables.update(floor_tables(model.config, words, caption_row["similarity"], args.rounds))
            if variant == "official":
                dense_captions = [d[m.bool()] for d, m in zip(dense[subset], dense_mask[subset], strict=True)]
                with_dense = lambda model=model: model.similarity(  # noqa: E731
                    images, texts, text_mask, dense, dense_mask, chunk_size=args.chunk_size, dtype=dtype
                )
                _, median = interleaved(
                    {
                        "leaky loop": lambda model=model, captions=dense_captions: official_caption_loop(
                            model, images, captions
                        ),
                        "with dense": with_dense,
                        "without": lambda model=model: model.similarity(
                            images, texts, text_mask, chunk_size=args.chunk_size, dtype=dtype
                        ),
                    },
                    args.rounds,
                )
                per_image = max(median["with dense"] - median["without"], 0) / args.images
                tables["dense"].rows.append(
                    {
                        "scoring": "official dense branch",
                        "similarity_ms_per_image": 1e3 * per_image,
                        "loop": reference_pairs / median["leaky loop"],
                    }
                )
            else:
                results, median = interleaved(
                    {
                        "loop": lambda model=model: reference_similarity(
                            model, images, texts[subset], text_mask[subset], dense, dense_mask
                        ),
                        "ours": lambda model=model: model.similarity(
                            images, texts, text_mask, dense, dense_mask, chunk_size=args.chunk_size, dtype=dtype
                        ),
                    },
                    args.rounds,
                )
                row = ratio_row("paper with dense captions", results, median, pairs, reference_pairs, subset)
                tables["main"].rows.append(row)
            if args.profile:
                table = profile_table(lambda model=model: model.similarity(images, texts, text_mask, dtype=dtype))
                profiles.append(f"\nprofile of similarity(), {variant} caption branch:\n{table}")
    for name, table in tables.items():
        print(f"\n{name}:\n{table.markdown()}")
    print(*profiles, sep="\n")
    recorder.write(tables, notes="The paper variant has no authors' code: its loop is ours.")


if __name__ == "__main__":
    main()
