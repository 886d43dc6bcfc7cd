"""Two-stage text-to-image search against exhaustive scoring and against its own first stage, on trained models and
a real split (several models, e.g. training seeds: mean and standard deviation).

Stage 1 shortlists the images whose global embedding is closest to the caption's (`SepsModel.global_image_embeds`:
trained by the contrastive loss, or the mean-pooled tokens of a model without one); stage 2 re-ranks the shortlist
with the model's score (`transformers_seps.retrieval.shortlist_and_rerank`, what `SepsRetriever` does with
`shortlist_size`: S, fused with the first stage's score when the model's `first_stage_weight` is set). Prints
text-to-image R@1/5/10 of the exhaustive search, of the first stage alone (the shortlist's own ranking) and of each
two-stage search, how often the shortlist holds the caption's image (beside how often the exhaustive search ranks it
among as many images: the shortlist's yardstick), and the time per query. R@K is exact for K up to the shortlist
size: an image left out of the shortlist ranks below every shortlisted one.

    python benchmarks/bench_two_stage.py --models runs/demo/best --data_root data/synthetic \\
        --shortlist_sizes 10 20 50 100 [--results_file docs/results/NAME.json]
"""

import argparse
import time

import torch
from results import Column, Recorder, Table, add_results_argument

from transformers_seps import SepsModel, SepsProcessor
from transformers_seps.metrics import retrieval_metrics
from transformers_seps.retrieval import shortlist_and_rerank
from transformers_seps.train.allocator import reuse_freed_cpu_memory
from transformers_seps.train.data import load_retrieval_split
from transformers_seps.train.evaluation import encode_split, first_stage_similarity, score_split

COLUMNS = [
    Column("search"),
    Column("t2i_r1", "t2i R@1", "{:.1f}"),
    Column("t2i_r5", "t2i R@5", "{:.1f}"),
    Column("t2i_r10", "t2i R@10", "{:.1f}"),
    Column("in_shortlist", "image in shortlist (%)", "{:.1f}"),
    Column("in_exhaustive_top", "in exhaustive top K (%)", "{:.1f}"),
    Column("ms_per_query", "ms per query", "{:.1f}"),
]


def row(similarity: torch.Tensor, targets: torch.Tensor, seconds: float, in_shortlist: float, in_top: float) -> dict:
    """A table row: (N_img, N_txt) scores of a search, its time, and how often the right image was among its
    candidates / among the exhaustive search's as many best."""
    metrics = retrieval_metrics(similarity, targets)
    return {
        **{key: metrics[key] for key in ("t2i_r1", "t2i_r5", "t2i_r10")},
        "in_shortlist": 100 * in_shortlist,
        "in_exhaustive_top": 100 * in_top,
        "ms_per_query": 1000 * seconds / similarity.shape[1],
    }


def searches(model: SepsModel, encoded, shortlist_sizes: list[int]) -> dict[str, dict]:
    """Every row of one model: the exhaustive search, the first stage alone, and each two-stage search."""
    targets = torch.as_tensor(encoded.caption_to_image)
    num_images, num_captions = encoded.image_embeds.shape[0], len(targets)
    pairing = "image" if encoded.dense_embeds is not None else "none"
    start = time.perf_counter()
    exhaustive = torch.as_tensor(score_split(model, encoded, pairing, progress=False))
    rows = {"exhaustive": row(exhaustive, targets, time.perf_counter() - start, 1.0, 1.0)}
    # Images the exhaustive search scores above each caption's own image (ties count for the caption).
    caption_scores = exhaustive.t()
    exhaustive_rank = (caption_scores > caption_scores.gather(1, targets.unsqueeze(1))).sum(dim=1)
    start = time.perf_counter()
    first_stage = torch.as_tensor(first_stage_similarity(model, encoded))
    rows["first stage alone"] = row(first_stage, targets, time.perf_counter() - start, 1.0, 1.0)
    for size in sorted(set(shortlist_sizes)):
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
        in_top = (exhaustive_rank < size).float().mean().item()
        rows[f"shortlist {size} + re-ranking"] = row(similarity.t(), targets, seconds, in_shortlist, in_top)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["runs/demo/best"], help="trained model folders or hub ids")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_root", default="data/synthetic")
    parser.add_argument("--image_root", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--shortlist_sizes", type=int, nargs="+", default=[10, 20, 50, 100])
    add_results_argument(parser)
    args = parser.parse_args()
    recorder = Recorder(args.results_file)

    reuse_freed_cpu_memory()
    split = load_retrieval_split(args.data_root, args.dataset, args.split, args.image_root)
    per_model, weights = [], []
    for folder in args.models:
        model = SepsModel.from_pretrained(folder).eval()
        processor = SepsProcessor.from_pretrained(folder)
        encoded = encode_split(model, processor, split, use_dense=split.has_dense_captions, progress=False)
        per_model.append(searches(model, encoded, args.shortlist_sizes))
        weights.append(model.config.first_stage_weight)
    rows = [
        {"search": name, **{c.key: [searched[name][c.key] for searched in per_model] for c in COLUMNS[1:]}}
        for name in per_model[0]
    ]
    notes = (
        f"{args.dataset}/{args.split}: {split.num_images} images, {split.num_captions} caption queries, dense "
        f"captions {'on' if split.has_dense_captions else 'off'}; {len(per_model)} model(s)"
        f"{', mean ± standard deviation' if len(per_model) > 1 else ''}; w (first_stage_weight, fit on dev): "
        + ", ".join(f"{weight:.3g}" for weight in weights)
        + "."
    )
    table = Table(COLUMNS, rows)
    print(f"{notes} {torch.get_num_threads()} threads.")
    print(table.markdown())
    recorder.write({"main": table}, notes=notes)


if __name__ == "__main__":
    main()
