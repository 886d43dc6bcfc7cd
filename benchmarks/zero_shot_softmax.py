"""How confident Transformers' `zero-shot-image-classification` pipeline is with a SEPS model, before and after
calibrating its logit scale.

For each test image of a split in the authors' layout, the pipeline picks among three candidate captions: the
image's first caption (the right one) and the first captions of the next two images. Printed: the mean
probability of the right caption and the top-1 accuracy, with `logit_scale` 1.0 (the raw scores S, as before
calibration) and with the model's own (fit on dev by the training runner). `--results_file
docs/results/NAME.json` also writes the table for the docs (`benchmarks/results.py`).

    python benchmarks/zero_shot_softmax.py --model runs/demo/best --data_root data/synthetic \
        [--results_file docs/results/zero_shot_softmax.json]
"""

import argparse
import copy

from results import Column, Recorder, Table, add_results_argument
from transformers import pipeline

from transformers_seps import SepsModel, SepsProcessor
from transformers_seps.train.data import load_retrieval_split

CANDIDATES = 3


def first_captions(split) -> list[str]:
    """The first caption of each image of `split`."""
    firsts: dict[int, str] = {}
    for caption, image in zip(split.captions, split.caption_to_image, strict=True):
        firsts.setdefault(image, caption)
    return [firsts[image] for image in range(split.num_images)]


def zero_shot(model: SepsModel, processor: SepsProcessor, images: list, captions: list[str]) -> tuple[float, float]:
    """Mean probability of the right caption and top-1 accuracy over the images."""
    classifier = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    right_probability, right_top1 = 0.0, 0
    for index, image in enumerate(images):
        candidates = [captions[(index + offset) % len(captions)] for offset in range(CANDIDATES)]
        result = classifier(image, candidate_labels=candidates, hypothesis_template="{}")
        right_probability += next(entry["score"] for entry in result if entry["label"] == candidates[0])
        right_top1 += result[0]["label"] == candidates[0]
    return right_probability / len(images), 100.0 * right_top1 / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/best")
    parser.add_argument("--data_root", default="data/synthetic")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max_images", type=int, default=200)
    add_results_argument(parser)
    args = parser.parse_args()
    recorder = Recorder(args.results_file)

    split = load_retrieval_split(args.data_root, args.dataset, args.split, dense_captions="ignore")
    num_images = min(args.max_images, split.num_images)
    if num_images < CANDIDATES:
        parser.error(f"--max_images must leave at least {CANDIDATES} images, got {num_images}")
    images = [split.load_image(index) for index in range(num_images)]
    captions = first_captions(split)[:num_images]
    model = SepsModel.from_pretrained(args.model).eval()
    processor = SepsProcessor.from_pretrained(args.model)
    uncalibrated = copy.deepcopy(model)
    uncalibrated.config.logit_scale = 1.0

    print(f"{num_images} images of {args.dataset}/{args.split}, {CANDIDATES} candidate captions each")
    table = Table(
        [
            Column("logit_scale", "logit_scale"),
            Column("probability", "mean p(right caption)", "{:.3f}"),
            Column("accuracy", "top-1 accuracy (%)", "{:.1f}"),
        ]
    )
    for name, scaled in (("1.0 (raw S)", uncalibrated), (f"{model.config.logit_scale:.2f} (fit on dev)", model)):
        probability, accuracy = zero_shot(scaled, processor, images, captions)
        table.rows.append({"logit_scale": name, "probability": probability, "accuracy": accuracy})
    print(table.markdown())
    recorder.write({"main": table}, notes=f"{num_images} test images, {CANDIDATES} candidate captions each.")


if __name__ == "__main__":
    main()
