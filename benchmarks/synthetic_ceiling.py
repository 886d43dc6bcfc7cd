"""What recall is possible on a synthetic benchmark split: chance and a perfect reader (where a trained model stands,
and what it has learned to see: `benchmarks/compare_scorers.py`).

A synthetic caption ("a red circle and a blue star") is usually true of several images of the split. The perfect
reader knows every scene and ranks the images a caption is true of (or the captions true of an image) first, in
random order among themselves; it cannot tell its ground-truth image from another image the caption also fits.
Its expected R@K is printed next to chance (a random ranking), for both directions, from the split's scene file
(`transformers_seps.train.data.synthetic.caption_holds`).

    python benchmarks/synthetic_ceiling.py --data_root data/synthetic --split test \\
        [--results_file docs/results/NAME.json]
"""

import argparse
from math import comb

from results import Column, Recorder, Table, add_results_argument

from transformers_seps.train.data import load_retrieval_split
from transformers_seps.train.data.synthetic import read_scenes
from transformers_seps.train.synthetic_eval import caption_truth

RECALL_AT = (1, 5, 10)


def expected_recall(num_candidates: int, num_correct: int, k: int) -> float:
    """P(a random order of `num_candidates` items puts at least one of the `num_correct` in its first k)."""
    return 1.0 - comb(num_candidates - num_correct, k) / comb(num_candidates, k) if k < num_candidates else 1.0


KEYS = tuple(f"{direction}_r{k}" for direction in ("i2t", "t2i") for k in RECALL_AT)
COLUMNS = [
    Column("ranking"),
    *(Column(key, key.replace("_r", " R@"), "{:.1f}") for key in KEYS),
    Column("rsum", "rSum", "{:.1f}"),
]


def expected_t2i(images_fitting: list[int], k: int) -> float:
    return 100 * sum(expected_recall(n, 1, k) for n in images_fitting) / len(images_fitting)


def random_order_row(name: str, t2i_candidates: list[int], i2t_candidates: list[int], captions_per_image: int) -> dict:
    """Mean expected R@K over queries, each query's right answers placed at random among its candidates."""
    i2t = [
        100 * sum(expected_recall(n, captions_per_image, k) for n in i2t_candidates) / len(i2t_candidates)
        for k in RECALL_AT
    ]
    recalls = i2t + [expected_t2i(t2i_candidates, k) for k in RECALL_AT]
    return {"ranking": name, **dict(zip(KEYS, recalls, strict=True)), "rsum": sum(recalls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="data/synthetic")
    parser.add_argument("--split", default="test")
    add_results_argument(parser)
    args = parser.parse_args()
    recorder = Recorder(args.results_file)

    split = load_retrieval_split(args.data_root, "synthetic", args.split, require_images=False, dense_captions="auto")
    scenes = read_scenes(args.data_root, args.split)
    if len(scenes) != len(split.image_ids):
        raise ValueError(f"{len(scenes)} scenes for {len(split.image_ids)} images in {args.data_root}/{args.split}")
    num_images, num_captions = len(scenes), len(split.captions)
    captions_per_image = num_captions // num_images
    holds = caption_truth(split.captions, scenes)
    images_fitting = holds.sum(axis=1).tolist()
    captions_fitting = holds.sum(axis=0).tolist()

    notes = (
        f"synthetic/{args.split}: {num_images} images, {num_captions} captions; a caption is true of "
        f"{sum(images_fitting) / num_captions:.1f} images on average (median "
        f"{sorted(images_fitting)[num_captions // 2]}), an image has {sum(captions_fitting) / num_images:.1f} "
        f"true captions."
    )
    rows = [
        random_order_row("chance", [num_images] * num_captions, [num_captions] * num_images, captions_per_image),
        random_order_row("perfect reader", images_fitting, captions_fitting, captions_per_image),
    ]
    table = Table(COLUMNS, rows)
    print(notes)
    print(table.markdown())
    recorder.write({"main": table}, notes=notes)


if __name__ == "__main__":
    main()
