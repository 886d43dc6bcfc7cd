"""The floor of `benchmarks/bench_similarity.py --floor` counts the multiply-adds `similarity` really does: its
per-step count equals what torch's FLOP counter measures per pair on the official caption branch."""

from pathlib import Path

import torch
from conftest import load_script
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_similarity.py"
WORDS = 7


def test_the_floor_counts_the_multiply_adds_of_the_official_caption_branch():
    bench = load_script(BENCH, "bench_similarity")
    model = bench.build_model("official", 64)  # ViT-224 patches (196 + [CLS]), a small embedding

    def flops(num_images: int, num_captions: int) -> int:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(num_images, 197, 64, generator=generator)
        captions = torch.randn(num_captions, WORDS, 64, generator=generator)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.similarity(images, captions, torch.ones(num_captions, WORDS, dtype=torch.long))
        return counter.get_total_flops()

    # Twice the captions, the same images: the difference is per-pair work only (2 FLOPs per multiply-add).
    per_pair = (flops(2, 8) - flops(2, 4)) / (2 * 4)
    counts = bench.multiply_adds_per_pair(model.config, WORDS)
    assert per_pair == 2 * sum(counts.values())
    assert counts["patches x words"] == 196 * 64 * WORDS
