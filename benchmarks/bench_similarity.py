"""Pairs per second of `SepsModel.similarity` against the one-caption-at-a-time reference loop.

Flickr30K / ViT-224 shapes: embed 512, 196 patches + [CLS], 16-token captions, 128-token dense captions
(one per image), random weights. Both variants; prints a markdown table with the max abs difference.
`--dtype bfloat16` casts the model and the embeddings; the reference loop then runs in float32 on the same
(rounded) embeddings, so the difference is the bfloat16 model's error.

    .venv/bin/python benchmarks/bench_similarity.py [--images 100 --captions 100 --reference_captions 20]
        [--dtype bfloat16]
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, ViTConfig

from transformers_seps import SepsConfig, SepsModel
from transformers_seps.train.allocator import reuse_freed_cpu_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_seps import reference_similarity  # noqa: E402

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


def timed(function, repeats: int = 1) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    for _ in range(repeats):
        result = function()
    return result, (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--captions", type=int, default=100)
    parser.add_argument("--reference_captions", type=int, default=20, help="captions scored by the slow loop")
    parser.add_argument("--caption_tokens", type=int, default=16)
    parser.add_argument("--dense_tokens", type=int, default=128)
    parser.add_argument("--embed_dim", type=int, default=512)
    parser.add_argument("--chunk_size", type=int, default=None)
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="precision of the model and embeddings")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    reuse_freed_cpu_memory()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 197, args.embed_dim, generator=generator).to(dtype)
    texts = torch.randn(args.captions, args.caption_tokens, args.embed_dim, generator=generator).to(dtype)
    text_mask = torch.ones(args.captions, args.caption_tokens, dtype=torch.long)
    dense = torch.randn(args.images, args.dense_tokens, args.embed_dim, generator=generator).to(dtype)
    dense_mask = torch.ones(args.images, args.dense_tokens, dtype=torch.long)
    subset = slice(0, args.reference_captions)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}; {args.images} images x "
        f"{args.captions} captions (reference: {args.reference_captions} captions), dense captions on"
    )
    print("| variant | similarity pairs/s | reference pairs/s | speed-up | max abs diff |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant in ("official", "paper"):
        reference_model = build_model(variant, args.embed_dim)
        model = reference_model if dtype == torch.float32 else build_model(variant, args.embed_dim).to(dtype)
        with torch.no_grad():
            model.similarity(images[:2], texts[:2], text_mask[:2], dense[:2], dense_mask[:2])  # warm-up
            fast, fast_seconds = timed(
                lambda model=model: model.similarity(
                    images, texts, text_mask, dense, dense_mask, chunk_size=args.chunk_size
                )
            )
            slow, slow_seconds = timed(
                lambda model=reference_model: reference_similarity(
                    model, images.float(), texts[subset].float(), text_mask[subset], dense.float(), dense_mask
                )
            )
        fast_rate = args.images * args.captions / fast_seconds
        slow_rate = args.images * args.reference_captions / slow_seconds
        difference = (fast[:, subset] - slow).abs().max().item()
        print(f"| {variant} | {fast_rate:,.0f} | {slow_rate:,.0f} | {fast_rate / slow_rate:.1f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
