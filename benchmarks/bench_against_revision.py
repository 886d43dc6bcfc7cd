"""Time `SepsModel.similarity` of this checkout against the same method at an earlier git revision, like for like.

Both versions score the same Flickr30K / ViT-224-shaped embeddings (C = 512, 196 patches + [CLS], 16-token
captions, 128-token dense captions) with the same head weights, in one process, alternating which goes first in
each round; the script prints the median of the per-round time ratios (below 1: this checkout is faster) and the
largest score difference. The earlier `modeling_seps.py` is read with `git show REV:...` into a temporary module
of this package, so it runs with this checkout's configuration and backbones.

    python benchmarks/bench_against_revision.py --rev e4bb380 --images 12 --captions 48 --rounds 40
"""

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
from transformers import BertConfig, ViTConfig

from transformers_seps import SepsConfig, SepsModel
from transformers_seps.train.allocator import reuse_freed_cpu_memory

REPOSITORY = Path(__file__).resolve().parents[1]
MODELING = "src/transformers_seps/modeling_seps.py"


def modeling_at(revision: str, folder: Path) -> ModuleType:
    """`modeling_seps` as it was at `revision`, imported as a module of this package (for its relative imports)."""
    source = subprocess.run(
        ["git", "show", f"{revision}:{MODELING}"], cwd=REPOSITORY, capture_output=True, text=True, check=True
    ).stdout
    path = folder / "modeling_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("transformers_seps.modeling_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="e4bb380", help="The earlier revision to compare with.")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--captions", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no_dense", action="store_true", help="score without dense captions (the caption branch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_cpu_memory()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 197, 512, generator=generator)
    texts = torch.randn(args.captions, 16, 512, generator=generator)
    text_mask = torch.ones(args.captions, 16, dtype=torch.long)
    dense = None if args.no_dense else torch.randn(args.images, 128, 512, generator=generator)
    dense_mask = None if args.no_dense else torch.ones(args.images, 128, dtype=torch.long)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.images} images x {args.captions} captions, "
        f"{args.rounds} rounds, {'without' if args.no_dense else 'with'} dense captions, this checkout against "
        f"{args.rev}"
    )
    with tempfile.TemporaryDirectory() as folder:
        earlier = modeling_at(args.rev, Path(folder))
        for variant in ("official", "paper"):
            vision = ViTConfig(hidden_size=512, num_hidden_layers=1, num_attention_heads=8, intermediate_size=64)
            text = BertConfig(hidden_size=512, num_hidden_layers=1, num_attention_heads=8, intermediate_size=64)
            config = SepsConfig(vision_config=vision, text_config=text, embed_dim=512, variant=variant)
            # Each version with its own default block: earlier revisions had 256 in the config, none from the device.
            earlier_config = SepsConfig(**{**config.to_dict(), "similarity_chunk_size": 256})
            torch.manual_seed(0)
            models = {"now": SepsModel(config).eval(), args.rev: earlier.SepsModel(earlier_config).eval()}
            # The earlier revision kept the variant's parameters at the top level (no `head.` prefix).
            weights = models["now"].state_dict()
            if not any(key.startswith("head.") for key in models[args.rev].state_dict()):
                weights = {key.removeprefix("head."): value for key, value in weights.items()}
            # The first stage takes no part in `similarity` and its layout changed (issue 14): not compared.
            weights = {key: value for key, value in weights.items() if not key.startswith("global_embedding.")}
            missing, unexpected = models[args.rev].load_state_dict(weights, strict=False)
            if unexpected or any(not key.startswith("global_embedding.") for key in missing):
                raise RuntimeError(f"{args.rev} does not take this checkout's weights: {missing=}, {unexpected=}")
            times = {name: [] for name in models}
            with torch.no_grad():
                scores = {name: m.similarity(images, texts, text_mask, dense, dense_mask) for name, m in models.items()}
                for round_index in range(args.rounds):
                    for name in list(models) if round_index % 2 == 0 else list(reversed(models)):
                        start = time.perf_counter()
                        models[name].similarity(images, texts, text_mask, dense, dense_mask)
                        times[name].append(time.perf_counter() - start)
            ratio = statistics.median(a / b for a, b in zip(times["now"], times[args.rev], strict=True))
            difference = (scores["now"] - scores[args.rev]).abs().max().item()
            pairs = args.images * args.captions
            print(
                f"{variant}: time now / {args.rev} {ratio:.3f} (median of {args.rounds} rounds); pairs/s now "
                f"{pairs / statistics.median(times['now']):,.0f}, {args.rev} "
                f"{pairs / statistics.median(times[args.rev]):,.0f}; max |score difference| {difference:.1e}"
            )


if __name__ == "__main__":
    main()
