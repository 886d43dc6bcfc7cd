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
patch-word product's shape; the rest of the time goes to gathers and element-wise passes (README, Speed).
`--chunk_sizes A B ... [--thread_counts 1 2]` instead times `similarity` on the official caption branch for each
block size and thread count, in alternating rounds (the knobs of the README's Speed section), and exits.

    .venv/bin/python benchmarks/bench_similarity.py [--images 128 --captions 64 --reference_captions 16]
        [--rounds 5] [--threads 2] [--dtype bfloat16] [--profile] [--floor]
        [--chunk_sizes 64 256 1024 --thread_counts 1 2]
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


def knob_table(images: torch.Tensor, texts: torch.Tensor, text_mask: torch.Tensor, args: argparse.Namespace) -> None:
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
    print("| chunk_size | threads | pairs/s |")
    print("| ---: | ---: | ---: |")
    for chunk, threads in settings:
        print(f"| {chunk} | {threads} | {images.shape[0] * texts.shape[0] / median[chunk, threads]:,.0f} |")


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


def floor_report(config: SepsConfig, words: float, measured_pairs_per_second: float, rounds: int) -> None:
    """What the official caption branch's multiply-adds would cost at the GEMM rate of this machine, and the
    share of that floor `similarity` reaches."""
    counts = multiply_adds_per_pair(config, words)
    total = sum(counts.values())
    # The patch-word product of a block of 8 images x 64 captions, the largest GEMM of the scoring.
    rate = gemm_rate(8 * config.num_patches, config.embed_dim, round(64 * words), rounds)
    floor = rate / total
    threads = torch.get_num_threads()
    print(f"\nfloor, official caption branch (torch threads: {threads}, {words:.1f} words per caption):")
    print("| step | multiply-adds per pair |")
    print("| --- | ---: |")
    for step, count in counts.items():
        print(f"| {step} | {count / 1e6:.3f} M |")
    print(f"| total | {total / 1e6:.3f} M |")
    print(
        f"GEMM rate {rate / 1e9:.1f} G multiply-adds/s -> floor {floor:,.0f} pairs/s; similarity "
        f"{measured_pairs_per_second:,.0f} pairs/s = {100 * measured_pairs_per_second / floor:.0f}% of it"
    )


def ratio_row(
    label: str, loop_note: str, results: dict, median: dict, pairs: int, reference_pairs: int, subset: slice
) -> str:
    """A table row: `similarity`'s pairs/s ("ours") against the loop's ("loop"), the ratio, and the largest score
    difference on the captions both scored."""
    fast, slow = pairs / median["ours"], reference_pairs / median["loop"]
    difference = (results["ours"][:, subset] - results["loop"]).abs().max().item()
    return f"| {label} | {fast:,.0f} pairs/s | {slow:,.0f} pairs/s{loop_note} | {fast / slow:.1f}x | {difference:.1e} |"


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
    args = parser.parse_args()
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
        knob_table(images, texts, text_mask, args)
        return
    subset = slice(0, args.reference_captions)
    reference_pairs, pairs = args.images * args.reference_captions, args.images * args.captions

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}; {args.images} images x "
        f"{args.captions} captions of {args.min_caption_tokens}-{args.caption_tokens} tokens (loop: "
        f"{args.reference_captions} captions), {args.rounds} alternating rounds, median"
    )
    print("| scoring | similarity | authors-shaped loop | speed-up | max abs diff |")
    print("| --- | ---: | ---: | ---: | ---: |")
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
            print(
                ratio_row(f"{variant} caption branch", "", results, median, pairs, reference_pairs, subset), flush=True
            )
            if variant == "official" and args.floor:
                words = text_mask.sum(dim=1).float().mean().item()
                floor_report(model.config, words, pairs / median["ours"], args.rounds)
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
                print(
                    f"| official dense branch | {1e3 * per_image:.2f} ms per image | "
                    f"{reference_pairs / median['leaky loop']:,.0f} pairs/s (per pair) | | |",
                    flush=True,
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
                row = ratio_row(
                    "paper with dense captions", " (our loop)", results, median, pairs, reference_pairs, subset
                )
                print(row, flush=True)
            if args.profile:
                print(f"\nprofile of similarity(), {variant} caption branch:")
                print(profile_table(lambda model=model: model.similarity(images, texts, text_mask, dtype=dtype)))


if __name__ == "__main__":
    main()
