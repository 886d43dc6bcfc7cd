"""Where SEPS stands on a split: SEPS's score with and without dense captions, the first stage's alone, and the fused
score the model ranks by, for one or several trained models (several training seeds: mean ± standard deviation).
On the synthetic benchmark also text-to-image recall by caption template, the AUC of the colours and shapes a
caption names (`transformers_seps.train.synthetic_eval`), and selection grounding: how much of the objects a caption
names its patch selection keeps in the caption's own image, with and without dense captions, beside how much of the
scene's other objects it keeps and beside a random selection of as many patches.

    python benchmarks/compare_scorers.py --models runs/demo-0/best runs/demo-1/best runs/demo-2/best \\
        --data_root data/synthetic --split test [--pictures docs/images] [--results_file docs/results/NAME.json]
"""

import argparse
from pathlib import Path

import numpy as np
from results import Column, Recorder, Table, add_results_argument

from transformers_seps import SepsModel, SepsProcessor
from transformers_seps.metrics import retrieval_metrics
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

# The scorers compared: what each ranks by.
SCORERS = {
    "seps_dense": "SEPS: S with each image's own dense caption",
    "seps": "SEPS: S without dense captions",
    "first_stage": "first stage alone: G",
    "model": "the model's score: S (dense captions) + w G",
}
SELECTIONS = {"dense": "selection with dense captions", "no_dense": "selection without dense captions"}


def scorer_report(model: SepsModel, encoded, split, scenes) -> dict:
    """Every number of one model: each scorer's metrics (on the synthetic benchmark with its recall by template and
    attribute AUCs), and the selection grounding of each selection."""
    dense = encoded.dense_embeds is not None
    scores = {"seps": score_split(model, encoded, "none", progress=False, first_stage_weight=0)}
    if dense:
        scores["seps_dense"] = score_split(model, encoded, "image", progress=False, first_stage_weight=0)
    scores["first_stage"] = first_stage_similarity(model, encoded)
    scores["model"] = model.fuse_scores(scores["seps_dense" if dense else "seps"], scores["first_stage"])
    report: dict = {"scorers": {}, "grounding": {}}
    for name, similarity in scores.items():
        entry: dict = retrieval_metrics(similarity, split.caption_to_image)
        if scenes is not None:
            by_template = recall_by_template(similarity, split.captions, split.caption_to_image)
            entry.update({f"t2i_r10_{kind}": by_template[kind]["t2i_r10"] for kind in CAPTION_KINDS})
            entry.update(
                {f"auc_{group}": auc for group, auc in attribute_aucs(similarity, split.captions, scenes).items()}
            )
        report["scorers"][name] = entry
    if scenes is not None:
        side = grid_side(model)
        pairs = zip(split.captions, split.caption_to_image, strict=True)
        coverages = [caption_coverage(caption, scenes[image], side) for caption, image in pairs]
        named, others = np.stack([c[0] for c in coverages]), np.stack([c[1] for c in coverages])
        for name, use_dense in {"no_dense": False, **({"dense": True} if dense else {})}.items():
            keep = own_image_keep_masks(model, encoded, use_dense)
            report["grounding"][name] = selection_grounding(keep, named, others, split.captions)
    return report


def scorer_table(reports: list[dict], synthetic: bool) -> Table:
    columns = [Column("scorer")]
    columns += [
        Column(key, key.replace("_r", " R@").replace("rsum", "rSum"), "{:.1f}")
        for key in ("i2t_r1", "i2t_r10", "t2i_r1", "t2i_r10", "rsum")
    ]
    if synthetic:
        columns += [Column(f"t2i_r10_{kind}", f"t2i R@10, {kind} captions", "{:.1f}") for kind in CAPTION_KINDS]
        columns += [
            Column("auc_colours", "AUC colours named", "{:.3f}"),
            Column("auc_shapes", "AUC shapes named", "{:.3f}"),
        ]
    rows = []
    for name, title in SCORERS.items():
        if name in reports[0]["scorers"]:
            row = {"scorer": title}
            row.update({c.key: [r["scorers"][name][c.key] for r in reports] for c in columns[1:]})
            rows.append(row)
    return Table(columns, rows)


def grounding_table(reports: list[dict]) -> Table:
    columns = [
        Column("selection", "patches kept"),
        Column("recall", "named objects kept (%)", "{:.1f}"),
        Column("other_recall", "other objects kept (%)", "{:.1f}"),
        Column("precision", "precision (%)", "{:.1f}"),
        Column("best_precision", "best possible precision (%)", "{:.1f}"),
        *(Column(f"recall_{kind}", f"named kept, {kind} captions (%)", "{:.1f}") for kind in CAPTION_KINDS),
    ]

    def values(name: str, group: str, key: str) -> list[float]:
        return [100 * report["grounding"][name][group][key] for report in reports]

    rows = []
    for name, title in SELECTIONS.items():
        if name in reports[0]["grounding"]:
            row = {
                "selection": title,
                **{key: values(name, "all", key) for key in ("recall", "other_recall", "precision", "best_precision")},
            }
            row.update({f"recall_{kind}": values(name, kind, "recall") for kind in CAPTION_KINDS})
            rows.append(row)
    random = {"selection": "random, as many patches"}
    random.update(
        recall=values("no_dense", "all", "random_recall"), other_recall=values("no_dense", "all", "random_recall")
    )
    random.update(precision=values("no_dense", "all", "random_precision"))
    random.update({f"recall_{kind}": values("no_dense", kind, "random_recall") for kind in CAPTION_KINDS})
    return Table(columns, [*rows, random])


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
    parser.add_argument("--pictures", default=None, help="synthetic only: save one selection picture per template")
    add_results_argument(parser)
    args = parser.parse_args()
    recorder = Recorder(args.results_file)

    split = load_retrieval_split(args.data_root, args.dataset, args.split, args.image_root, dense_captions="auto")
    synthetic = args.dataset == "synthetic"
    scenes = read_scenes(args.data_root, args.split) if synthetic else None
    reports, weights = [], []
    for folder in args.models:
        model = SepsModel.from_pretrained(folder).eval()
        processor = SepsProcessor.from_pretrained(folder)
        encoded = encode_split(model, processor, split, use_dense=split.has_dense_captions, progress=False)
        reports.append(scorer_report(model, encoded, split, scenes))
        weights.append(model.config.first_stage_weight)
        if args.pictures and folder == args.models[0]:
            save_pictures(model, processor, split, Path(args.pictures))
    tables = {"main": scorer_table(reports, synthetic)}
    if synthetic:
        tables["grounding"] = grounding_table(reports)
    notes = (
        f"{args.dataset}/{args.split}: {split.num_images} images, {split.num_captions} captions; {len(reports)} "
        f"model(s){', mean ± standard deviation' if len(reports) > 1 else ''}; w (first_stage_weight, fit on dev): "
        + ", ".join(f"{weight:.3g}" for weight in weights)
        + "."
    )
    print(notes)
    for table in tables.values():
        print(table.markdown() + "\n")
    recorder.write(tables, notes=notes)


if __name__ == "__main__":
    main()
