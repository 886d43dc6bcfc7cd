"""Where SEPS stands on a split: SEPS's score with and without dense captions, the first stage's alone, and the fused
score the model ranks by, for one or several trained models (several training seeds: mean and standard deviation).
On the synthetic benchmark also text-to-image recall by caption template, the AUC of the colours and shapes a
caption names (`transformers_seps.train.synthetic_eval`), and selection grounding: how much of the objects a caption
names its patch selection keeps, with and without dense captions, beside a random selection of as many patches.

    .venv/bin/python benchmarks/compare_scorers.py --models runs/demo-0/best runs/demo-1/best runs/demo-2/best \\
        --data_root data/synthetic --split test [--output_json scorers.json] [--pictures docs/images]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from transformers_seps import SepsModel, SepsProcessor
from transformers_seps.metrics import METRIC_KEYS, retrieval_metrics
from transformers_seps.train.data import load_retrieval_split
from transformers_seps.train.data.synthetic import CAPTION_KINDS, caption_kind, read_scenes
from transformers_seps.train.evaluation import encode_split, first_stage_similarity, score_split
from transformers_seps.train.synthetic_eval import (
    attribute_aucs,
    caption_coverage,
    grid_side,
    own_image_keep_masks,
    recall_by_template,
    selection_grounding,
)

# The scorers compared, by name: what each ranks by.
SCORERS = {
    "seps_dense": "SEPS: S with each image's dense caption",
    "seps": "SEPS: S without dense captions",
    "first_stage": "first stage alone: G",
    "model": "the model's score: S (dense captions) + w * G",
}
GROUNDING = {"dense": "selection with dense captions", "no_dense": "selection without dense captions"}


def scorer_report(model: SepsModel, encoded, split, scenes) -> dict:
    """Every number of one model: per scorer its metrics (and on the synthetic benchmark its recall by template and
    attribute AUCs), and the selection grounding."""
    dense = encoded.dense_embeds is not None
    scores = {
        "seps": score_split(model, encoded, "none", progress=False, first_stage_weight=0),
        "first_stage": first_stage_similarity(model, encoded),
    }
    if dense:
        scores["seps_dense"] = score_split(model, encoded, "image", progress=False, first_stage_weight=0)
    scores["model"] = model.fuse_scores(scores["seps_dense" if dense else "seps"], scores["first_stage"])
    report: dict = {"first_stage_weight": model.config.first_stage_weight, "scorers": {}}
    for name, similarity in scores.items():
        entry: dict = retrieval_metrics(similarity, split.caption_to_image)
        if scenes is not None:
            entry["t2i_by_template"] = recall_by_template(similarity, split.captions, split.caption_to_image)
            entry["auc"] = attribute_aucs(similarity, split.captions, scenes)
        report["scorers"][name] = entry
    if scenes is not None:
        side = grid_side(model)
        pairs = zip(split.captions, split.caption_to_image, strict=True)
        named, others = (
            np.stack(c) for c in zip(*(caption_coverage(t, scenes[i], side) for t, i in pairs), strict=True)
        )
        selections = {"no_dense": False, **({"dense": True} if dense else {})}
        report["grounding"] = {
            name: selection_grounding(own_image_keep_masks(model, encoded, use_dense), named, others, split.captions)
            for name, use_dense in selections.items()
        }
    return report


def mean_and_std(reports: list) -> tuple:
    """The mean and the standard deviation (n - 1) over models of every number of their reports, nested alike."""
    first = reports[0]
    if isinstance(first, dict):
        pairs = {key: mean_and_std([report[key] for report in reports]) for key in first}
        return {key: mean for key, (mean, _) in pairs.items()}, {key: std for key, (_, std) in pairs.items()}
    values = np.asarray(reports, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def cell(mean: float, std: float, runs: int, digits: int = 1) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if runs > 1 else f"{mean:.{digits}f}"


def print_tables(mean: dict, std: dict, runs: int, synthetic: bool) -> None:
    keys = [key for key in METRIC_KEYS if key.endswith(("r1", "r10", "rsum"))]
    header = ["scorer", *keys]
    if synthetic:
        header += [f"t2i R@10 {kind}" for kind in CAPTION_KINDS] + ["AUC colours", "AUC shapes"]
    print("| " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * (len(header) - 1))
    for name, title in SCORERS.items():
        if name not in mean["scorers"]:
            continue
        m, s = mean["scorers"][name], std["scorers"][name]
        cells = [cell(m[key], s[key], runs) for key in keys]
        if synthetic:
            by_kind, by_kind_std = m["t2i_by_template"], s["t2i_by_template"]
            cells += [cell(by_kind[k]["t2i_r10"], by_kind_std[k]["t2i_r10"], runs) for k in CAPTION_KINDS]
            cells += [cell(m["auc"][a], s["auc"][a], runs, 3) for a in ("colours", "shapes")]
        print(f"| {title} | " + " | ".join(cells) + " |")
    if not synthetic:
        return
    print(
        "\n| patches kept | named objects kept | other objects kept | precision (best possible) | "
        + " | ".join(f"named kept, {kind}" for kind in CAPTION_KINDS)
        + " |"
    )
    print("| --- |" + " ---: |" * (3 + len(CAPTION_KINDS)))
    for name, title in GROUNDING.items():
        if name not in mean["grounding"]:
            continue
        m, s = mean["grounding"][name], std["grounding"][name]
        percent = {
            (group, key): cell(100 * m[group][key], 100 * s[group][key], runs) for group in m for key in m[group]
        }
        cells = [percent["all", "recall"], percent["all", "other_recall"]]
        cells.append(f"{percent['all', 'precision']} ({percent['all', 'best_precision']})")
        cells += [percent[kind, "recall"] for kind in CAPTION_KINDS]
        print(f"| {title} | " + " | ".join(cells) + " |")
    random = mean["grounding"]["no_dense"]
    cells = [f"{100 * random['all']['random_recall']:.1f}"] * 2 + [f"{100 * random['all']['random_precision']:.1f}"]
    cells += [f"{100 * random[kind]['random_recall']:.1f}" for kind in CAPTION_KINDS]
    print("| random, as many patches | " + " | ".join(cells) + " |")


def save_pictures(model: SepsModel, processor: SepsProcessor, split, folder: Path) -> None:
    """The patches the first test caption of each template keeps in its image, with the image's dense caption."""
    from transformers_seps.visualization import plot_patch_selection

    folder.mkdir(parents=True, exist_ok=True)
    for kind in CAPTION_KINDS:
        row = next(row for row, caption in enumerate(split.captions) if caption_kind(caption) == kind)
        image = split.caption_to_image[row]
        dense = split.dense_captions[image] if split.dense_captions is not None else None
        figure = plot_patch_selection(model, processor, split.load_image(image), split.captions[row], dense)
        figure.savefig(folder / f"selection_{kind}.png", dpi=100, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="trained model folders (e.g. one per seed)")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_root", default="data/synthetic")
    parser.add_argument("--image_root", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--output_json", default=None, help="write every number here")
    parser.add_argument("--pictures", default=None, help="synthetic only: save one selection picture per template")
    args = parser.parse_args()

    split = load_retrieval_split(args.data_root, args.dataset, args.split, args.image_root, dense_captions="auto")
    synthetic = args.dataset == "synthetic"
    scenes = read_scenes(args.data_root, args.split) if synthetic else None
    reports = []
    for folder in args.models:
        model = SepsModel.from_pretrained(folder).eval()
        processor = SepsProcessor.from_pretrained(folder)
        encoded = encode_split(model, processor, split, use_dense=split.has_dense_captions, progress=False)
        reports.append(scorer_report(model, encoded, split, scenes))
        if args.pictures and folder == args.models[0]:
            save_pictures(model, processor, split, Path(args.pictures))
    mean, std = mean_and_std(reports)
    runs = len(reports)
    print(
        f"{args.dataset}/{args.split}: {split.num_images} images, {split.num_captions} captions; {runs} model(s)"
        + (" (mean ± standard deviation)" if runs > 1 else "")
        + f"; first_stage_weight {cell(mean['first_stage_weight'], std['first_stage_weight'], runs, 3)}"
    )
    print_tables(mean, std, runs, synthetic)
    if args.output_json:
        results = {"models": args.models, "split": f"{args.dataset}/{args.split}", "mean": mean, "std": std}
        Path(args.output_json).write_text(json.dumps({**results, "per_model": reports}, indent=2))


if __name__ == "__main__":
    main()
