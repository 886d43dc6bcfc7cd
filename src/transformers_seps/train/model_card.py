"""The machine-readable parts of a SEPS model card, shared by the training runner's card (`best/README.md`,
`render_trained_model_card`) and the converter's (`transformers_seps.tools.model_card`): the Hub metadata
(`pipeline_tag`, `datasets`, `base_model`) and a `model-index` filled from an evaluation report, with its protocol
(each dense caption paired with its own image; docs/model.md, section 2).
"""

import textwrap
from collections.abc import Mapping
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from ..metrics import METRIC_KEYS, markdown_table

CARD_WIDTH = 115  # line width of the cards' paragraphs

CARD_TAGS = ("seps", "image-text-retrieval", "cross-modal-retrieval", "custom_code")

# The Hub has no retrieval task. Its task for models that score one image against free-text candidates (CLIP,
# SigLIP) is zero-shot image classification; SEPS's `logits_per_image` does exactly that: it ranks captions for an
# image. Not "image-feature-extraction": a SEPS score needs the image and the caption together.
PIPELINE_TAG = "zero-shot-image-classification"
# The Hub datasets in the layout `transformers_seps.train.data.hub` reads (Karpathy's splits).
HUB_DATASETS = {"f30k": "nlphuji/flickr30k", "coco": "yerevann/coco-karpathy"}
# model-index: the task (not a Hub pipeline task, see PIPELINE_TAG), the test sets, the metrics (R@K: "recall", a
# Hub metric id, in percent; rSum, the sum of the six, has no Hub id) and the dense-caption pairing of each result.
_RETRIEVAL_TASK = {"task_type": "image-text-retrieval", "task_name": "Image-text retrieval"}
_TEST_SETS = {"f30k": "Flickr30K 1K test (Karpathy split)", "coco": "MS-COCO 5K test (Karpathy split)"}
_METRIC_NAMES = {
    "i2t_r1": "Image-to-text R@1",
    "i2t_r5": "Image-to-text R@5",
    "i2t_r10": "Image-to-text R@10",
    "t2i_r1": "Text-to-image R@1",
    "t2i_r5": "Text-to-image R@5",
    "t2i_r10": "Text-to-image R@10",
    "rsum": "rSum (sum of the six recalls)",
}
DENSE_PAIRING_PROTOCOLS = {
    "image": "dense captions paired with their own images",
    "none": "without dense captions",
}


def honest_metrics(eval_results: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float] | None]:
    """The whole-test-set metrics of an evaluation report and the mean of COCO's 1K folds (or None).

    Reads the `eval_results.json` of `examples/train_retrieval.py` (1K folds as `1k_<metric>`) and the
    `--output_json` of `examples/evaluate_retrieval.py` (1K folds under `coco_1k`; of a leak audit, its honest
    half only: the authors' pairing is a label leak, never a result).
    """
    report = eval_results.get("honest", eval_results)
    missing = [key for key in METRIC_KEYS if not isinstance(report.get(key), (int, float))]
    if missing:
        raise ValueError(f"the evaluation results have no {', '.join(missing)}: expected {', '.join(METRIC_KEYS)}")
    folds = report.get("coco_1k") or {key: report[f"1k_{key}"] for key in METRIC_KEYS if f"1k_{key}" in report}
    return {key: float(report[key]) for key in METRIC_KEYS}, (folds if len(folds) == len(METRIC_KEYS) else None)


def model_index_results(
    eval_results: Mapping[str, Any], dataset: str, dense_pairing: str = "image", dataset_id: str | None = None
) -> list[EvalResult]:
    """The `model-index` results of an evaluation report on the test split of `dataset` ("f30k" or "coco"), each
    metric named with its test set and the dense-caption pairing in its `args`."""
    if dataset not in _TEST_SETS:
        raise ValueError(f"model-index results need dataset 'f30k' or 'coco', got {dataset!r}")
    if dense_pairing not in DENSE_PAIRING_PROTOCOLS:
        raise ValueError(f"dense_pairing must be one of {tuple(DENSE_PAIRING_PROTOCOLS)}, got {dense_pairing!r}")
    whole, folds = honest_metrics(eval_results)
    blocks = [("", whole)] + ([("1K folds (mean of 5): ", folds)] if folds is not None else [])
    return [
        EvalResult(
            **_RETRIEVAL_TASK,
            dataset_type=dataset_id or HUB_DATASETS[dataset],
            dataset_name=f"{_TEST_SETS[dataset]}, {DENSE_PAIRING_PROTOCOLS[dense_pairing]}",
            dataset_split="test",
            metric_type="rsum" if key == "rsum" else "recall",
            metric_name=prefix + _METRIC_NAMES[key],
            metric_value=round(metrics[key], 2),
            metric_args={"dense_pairing": dense_pairing},
        )
        for prefix, metrics in blocks
        for key in METRIC_KEYS
    ]


def card_metadata(
    model_name: str,
    base_model: list[str] | None,
    datasets: list[str] | None,
    eval_results: list[EvalResult] | None = None,
) -> str:
    """The YAML front matter of a card (between `---` lines), as `huggingface_hub.ModelCardData` writes it."""
    data = ModelCardData(
        library_name="transformers",
        license="other",
        pipeline_tag=PIPELINE_TAG,
        tags=list(CARD_TAGS),
        base_model=base_model or None,
        datasets=datasets or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    return f"---\n{data.to_yaml()}\n---"


def our_results_text(eval_results: Mapping[str, Any], dataset: str | None, dense_pairing: str) -> str:
    """Our measured results: the protocol in words and the table (the card's `model-index` holds the same)."""
    whole, folds = honest_metrics(eval_results)
    test_set = _TEST_SETS.get(dataset, "test split")
    intro = (
        f"**Ours**, measured on the {test_set} with `transformers_seps` (the protocol below: "
        f"{DENSE_PAIRING_PROTOCOLS[dense_pairing]}); the card's `model-index` holds the same numbers."
    )
    weight = eval_results.get("first_stage_weight")
    score = "S" if not weight else f"S + {weight:.3g} x the first stage's score"
    table = markdown_table(whole, f"whole test set, the model's score ({score})")
    if folds is not None:
        table += "\n" + markdown_table(folds, "1K folds (mean of 5)").split("\n", 2)[2]
    # A training run's results also hold SEPS's score and the first stage's alone (`evaluate_model`).
    for prefix, name in (("seps_", "SEPS alone (S)"), ("first_stage_", "first stage alone")):
        if all(f"{prefix}{key}" in eval_results for key in METRIC_KEYS):
            alone = {key: float(eval_results[f"{prefix}{key}"]) for key in METRIC_KEYS}
            table += "\n" + markdown_table(alone, f"whole test set, {name}").split("\n", 2)[2]
    return textwrap.fill(intro, width=CARD_WIDTH) + "\n\n" + table


def protocol_text(dataset: str, dense_pairing: str) -> str:
    """How the test results of a card were measured: the test set, and how dense captions were paired."""
    test_sets = {
        "f30k": "Flickr30K 1K test (1000 images x 5000 captions)",
        "coco": "MS-COCO 5K test (5000 images x 25000 captions) and the mean of its five 1K folds",
    }
    test_set = test_sets.get(dataset, "every test image against every test caption")
    pairing = {
        "image": "Each candidate image is scored with its own dense caption, never with that of the image a caption "
        "was written for",
        "none": "The model was trained and tested without dense captions",
    }[dense_pairing]
    return (
        f"Protocol: {test_set}; image-to-text counts the best of an image's captions. {pairing} "
        "(`examples/evaluate_retrieval.py`)."
    )


def render_trained_model_card(
    model_name: str,
    repo_id: str,
    dataset: str,
    training: Mapping[str, str],
    base_model: list[str] | None = None,
    datasets: list[str] | None = None,
    eval_results: Mapping[str, Any] | None = None,
    dense_pairing: str = "image",
) -> str:
    """The model card of a SEPS model trained by `examples/train_retrieval.py` (written into the run's `best/`).

    Args:
        model_name: the card's title and `model-index` name.
        repo_id: the Hub id (or folder) the code example loads.
        dataset: "f30k", "coco" or "synthetic": the training data and test split.
        training: what the run did, one table row each (backbones, steps, best dev epoch, ...).
        base_model: the Hub ids of the pretrained backbones (none for local or untrained ones).
        datasets: the Hub ids of the training data.
        eval_results: the run's `eval_results.json`; its test metrics go into the `model-index` for Flickr30K and
            MS-COCO (the synthetic benchmark is no Hub dataset: its results are in the text only).
        dense_pairing: "image" (each image's own dense caption) or "none" (trained and tested without).
    """
    results = None
    if eval_results is not None and dataset in HUB_DATASETS:
        results = model_index_results(eval_results, dataset, dense_pairing, (datasets or [None])[0])
    rows = "\n".join(["| | |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in training.items())])
    summary = (
        "A SEPS (Semantic-Enhanced Patch Slimming, Mao et al., arXiv 2511.01390) image-text retrieval model trained "
        "with `examples/train_retrieval.py` of transformers-seps; the checkpoint is the epoch with the best rSum on "
        "the dev split."
    )
    protocol = protocol_text(dataset, dense_pairing)
    measured = (
        our_results_text(eval_results, dataset, dense_pairing)
        if eval_results is not None
        else "Not evaluated on the test split (the run was started with `--no_eval_test`)."
    )
    usage = f"""```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
# scores = model(**processor(images=images, text=captions, dense_text=dense_captions)).logits_per_image
```"""
    sections = [
        card_metadata(model_name, base_model, datasets, results),
        f"# {model_name}",
        textwrap.fill(summary, width=CARD_WIDTH),
        f"## Training\n\n{rows}",
        f"## Results\n\n{measured}\n\n{textwrap.fill(protocol, width=CARD_WIDTH)}",
        f"## How to score pairs\n\n{usage}",
    ]
    return "\n\n".join(sections) + "\n"
