"""What recall is possible on a synthetic benchmark split: chance, a perfect reader, and (with --model) where a
trained model stands and what it has learned to see.

A synthetic caption ("a red circle and a blue star") is usually true of several images of the split. The perfect
reader knows every scene and ranks the images a caption is true of (or the captions true of an image) first, in
random order among themselves; it cannot tell its ground-truth image from another image the caption also fits.
Its expected R@K is printed next to chance (a random ranking), for both directions, from the split's scene file
(`transformers_seps.train.data.synthetic.caption_holds`).

With `--model`, the model's own row, its text-to-image recall by caption template (position, pair, relation),
and how well its scores separate, for each caption, the images that have every colour (or every shape) the
caption names from those that do not (AUC: 0.5 is blind to it, 1.0 separates perfectly).

    .venv/bin/python benchmarks/synthetic_ceiling.py --data_root data/synthetic --split test [--model runs/demo/best]
"""

import argparse
from math import comb

import numpy as np

from transformers_seps import SepsModel, SepsProcessor
from transformers_seps.metrics import retrieval_metrics, retrieval_ranks
from transformers_seps.train.data import load_retrieval_split
from transformers_seps.train.data.synthetic import COLORS, SHAPES, caption_holds, caption_kind, read_scenes
from transformers_seps.train.evaluation import encode_split, score_split

RECALL_AT = (1, 5, 10)
KINDS = ("position", "pair", "relation")


def expected_recall(num_candidates: int, num_correct: int, k: int) -> float:
    """P(a random order of `num_candidates` items puts at least one of the `num_correct` in its first k)."""
    return 1.0 - comb(num_candidates - num_correct, k) / comb(num_candidates, k) if k < num_candidates else 1.0


def table_row(name: str, i2t: list[float], t2i: list[float]) -> str:
    cells = " | ".join(f"{value:.1f}" for value in i2t + t2i)
    return f"| {name} | {cells} | {sum(i2t) + sum(t2i):.1f} |"


def expected_t2i(images_fitting: list[int], k: int) -> float:
    return 100 * sum(expected_recall(n, 1, k) for n in images_fitting) / len(images_fitting)


def random_order_row(name: str, t2i_candidates: list[int], i2t_candidates: list[int], captions_per_image: int) -> str:
    """Mean expected R@K over queries, each query's right answers placed at random among its candidates."""
    i2t = [
        100 * sum(expected_recall(n, captions_per_image, k) for n in i2t_candidates) / len(i2t_candidates)
        for k in RECALL_AT
    ]
    return table_row(name, i2t, [expected_t2i(t2i_candidates, k) for k in RECALL_AT])


def separation_auc(scores: np.ndarray, inside: np.ndarray) -> float:
    """P(an image inside the group outscores one outside; ties count half), for one caption's (N_img,) scores."""
    higher = scores[inside][:, None] - scores[~inside][None, :]
    return float((higher > 0).mean() + 0.5 * (higher == 0).mean())


def model_report(args, split, scenes, holds: np.ndarray, images_fitting: list[int]) -> None:
    model = SepsModel.from_pretrained(args.model).eval()
    processor = SepsProcessor.from_pretrained(args.model)
    use_dense = args.dense_pairing == "image"
    encoded = encode_split(model, processor, split, use_dense=use_dense, progress=False)
    similarity = np.asarray(score_split(model, encoded, args.dense_pairing, progress=False))  # (N_img, N_txt)
    metrics = retrieval_metrics(similarity, split.caption_to_image)
    print(
        table_row(
            f"{args.model} (dense captions: {args.dense_pairing})",
            [metrics[f"i2t_r{k}"] for k in RECALL_AT],
            [metrics[f"t2i_r{k}"] for k in RECALL_AT],
        )
    )

    t2i_ranks = retrieval_ranks(similarity, split.caption_to_image)[1]
    kinds = np.array([caption_kind(caption) for caption in split.captions])
    print("\n| captions | count | t2i R@1 | t2i R@10 | perfect reader t2i R@1 | perfect reader t2i R@10 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in KINDS:
        rows = np.flatnonzero(kinds == kind)
        model_recall = [100 * np.mean(t2i_ranks[rows] <= k) for k in (1, 10)]
        reader_recall = [expected_t2i([images_fitting[row] for row in rows], k) for k in (1, 10)]
        cells = " | ".join(f"{value:.1f}" for value in model_recall + reader_recall)
        print(f"| {kind} | {len(rows)} | {cells} |")

    has = {
        attribute: np.array([any(attribute in (obj.color, obj.shape) for obj in scene.objects) for scene in scenes])
        for attribute in (*COLORS, *SHAPES)
    }
    groups = {
        "the caption is true of": lambda row, caption: holds[row],
        "every colour the caption names": lambda row, caption: np.all(
            [has[w] for w in caption.split() if w in COLORS], 0
        ),
        "every shape the caption names": lambda row, caption: np.all(
            [has[w] for w in caption.split() if w in SHAPES], 0
        ),
    }
    print("\n| images that have ... against the others | mean AUC over captions | captions |")
    print("| --- | ---: | ---: |")
    for name, group in groups.items():
        aucs = []
        for row, caption in enumerate(split.captions):
            inside = group(row, caption)
            if 0 < inside.sum() < len(scenes):
                aucs.append(separation_auc(similarity[:, row], inside))
        print(f"| {name} | {np.mean(aucs):.3f} | {len(aucs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="data/synthetic")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default=None, help="a trained model folder or hub id to place in the table")
    parser.add_argument("--dense_pairing", default="image", choices=("image", "none"), help="for --model")
    args = parser.parse_args()

    split = load_retrieval_split(
        args.data_root, "synthetic", args.split, require_images=args.model is not None, dense_captions="auto"
    )
    scenes = read_scenes(args.data_root, args.split)
    if len(scenes) != len(split.image_ids):
        raise ValueError(f"{len(scenes)} scenes for {len(split.image_ids)} images in {args.data_root}/{args.split}")
    num_images, num_captions = len(scenes), len(split.captions)
    captions_per_image = num_captions // num_images
    holds = np.array([[caption_holds(caption, scene) for scene in scenes] for caption in split.captions])
    images_fitting = holds.sum(axis=1).tolist()
    captions_fitting = holds.sum(axis=0).tolist()

    print(
        f"synthetic/{args.split}: {num_images} images, {num_captions} captions; a caption is true of "
        f"{sum(images_fitting) / num_captions:.1f} images on average (median "
        f"{sorted(images_fitting)[num_captions // 2]}), an image has {sum(captions_fitting) / num_images:.1f} "
        f"true captions"
    )
    print("| ranking | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | rSum |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(random_order_row("chance", [num_images] * num_captions, [num_captions] * num_images, captions_per_image))
    print(random_order_row("perfect reader", images_fitting, captions_fitting, captions_per_image))
    if args.model:
        model_report(args, split, scenes, holds, images_fitting)


if __name__ == "__main__":
    main()
