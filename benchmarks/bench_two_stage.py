"""Two-stage text-to-image search against exhaustive SEPS scoring, on a trained model and a real split.

Stage 1 shortlists the images whose global embedding is closest to the caption's (`SepsModel.global_image_embeds`:
trained by the contrastive loss, or the mean-pooled tokens of a model without one); stage 2 re-ranks the shortlist
with SEPS (`transformers_seps.retrieval.shortlist_and_rerank`, what `SepsRetriever` does with
`shortlist_size`). Prints text-to-image R@1/5/10, how often the shortlist holds the caption's image (beside how
often exhaustive SEPS ranks it among as many images: the shortlist's yardstick), and the time per query of each
search. R@K is exact for K up to the shortlist size: an image left out of the shortlist
ranks below every shortlisted one.

    .venv/bin/python benchmarks/bench_two_stage.py --model runs/demo/best --data_root data/synthetic \
        --shortlist_sizes 10 20 50 100
"""

import argparse
import time

import torch

from transformers_seps import SepsModel, SepsProcessor
from transformers_seps.metrics import retrieval_metrics
from transformers_seps.retrieval import shortlist_and_rerank
from transformers_seps.train.allocator import reuse_freed_cpu_memory
from transformers_seps.train.data import load_retrieval_split
from transformers_seps.train.evaluation import encode_split, score_split


def text_to_image_row(
    name: str, similarity: torch.Tensor, caption_to_image, seconds: float, in_shortlist: float, in_seps_top: float
):
    metrics = retrieval_metrics(similarity, caption_to_image)
    per_query_ms = 1000 * seconds / similarity.shape[1]
    recalls = " | ".join(f"{metrics[f't2i_r{k}']:.1f}" for k in (1, 5, 10))
    return f"| {name} | {recalls} | {100 * in_shortlist:.1f} | {100 * in_seps_top:.1f} | {per_query_ms:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/best", help="a trained model folder or hub id")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_root", default="data/synthetic")
    parser.add_argument("--image_root", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--shortlist_sizes", type=int, nargs="+", default=[10, 20, 50, 100])
    args = parser.parse_args()

    reuse_freed_cpu_memory()
    model = SepsModel.from_pretrained(args.model).eval()
    processor = SepsProcessor.from_pretrained(args.model)
    split = load_retrieval_split(args.data_root, args.dataset, args.split, args.image_root)
    encoded = encode_split(model, processor, split, use_dense=split.has_dense_captions, progress=False)
    targets = torch.as_tensor(encoded.caption_to_image)
    num_images, num_captions = encoded.image_embeds.shape[0], len(targets)
    print(
        f"{args.dataset}/{args.split}: {num_images} images, {num_captions} caption queries, dense captions "
        f"{'on' if encoded.dense_embeds is not None else 'off'}, {torch.get_num_threads()} threads"
    )
    # "in exhaustive top K": how often exhaustive SEPS ranks the image among as many images as the shortlist.
    print("| search | t2i R@1 | t2i R@5 | t2i R@10 | image in shortlist (%) | in exhaustive top K (%) | ms per query |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")

    start = time.perf_counter()
    exhaustive = score_split(model, encoded, "image" if encoded.dense_embeds is not None else "none", progress=False)
    seconds = time.perf_counter() - start
    print(text_to_image_row("exhaustive", torch.as_tensor(exhaustive), targets, seconds, 1.0, 1.0))
    # Images exhaustive SEPS scores above each caption's own image (ties count for the caption).
    caption_scores = torch.as_tensor(exhaustive).t()
    seps_rank = (caption_scores > caption_scores.gather(1, targets.unsqueeze(1))).sum(dim=1)

    for size in sorted(set(args.shortlist_sizes)):
        if size >= num_images:
            continue
        start = time.perf_counter()
        result = shortlist_and_rerank(
            model, encoded.image_embeds, encoded.text_embeds, encoded.text_mask, size, encoded.dense_embeds,
            encoded.dense_mask,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        # Images outside a shortlist score below everything in it.
        similarity = torch.full((num_captions, num_images), result.scores.min().item() - 1)
        similarity.scatter_(1, result.indices, result.scores)
        in_shortlist = (result.indices == targets.unsqueeze(1)).any(dim=1).float().mean().item()
        in_top = (seps_rank < size).float().mean().item()
        print(text_to_image_row(f"shortlist {size} + SEPS", similarity.t(), targets, seconds, in_shortlist, in_top))


if __name__ == "__main__":
    main()
