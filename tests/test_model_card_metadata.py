"""Machine-readable model cards: `pipeline_tag`, `datasets`, `base_model` and a `model-index` filled from an
evaluation report (with its protocol: dense captions paired with their own images), as `huggingface_hub` reads
them, in the cards of the converter (`examples/convert_official_checkpoint.py --eval_results`) and of the training
runner (`best/README.md`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, metadata_load
from test_authors_layout import IMAGE_FOLDERS, copy_layout, tiny_backbones, write_images
from test_convert_checkpoint import TOKENIZER, write_authors_checkpoint
from test_convert_checkpoint import tiny_backbones as tiny_backbone_configs

from transformers_seps.metrics import METRIC_KEYS
from transformers_seps.tools.arguments import ConversionArguments
from transformers_seps.tools.convert_official import OfficialCheckpoint
from transformers_seps.tools.model_card import planned_releases, render_model_card
from transformers_seps.tools.publish import run_conversion
from transformers_seps.train.arguments import (
    DataArguments,
    EvaluationArguments,
    ModelArguments,
    RetrievalTrainingArguments,
)
from transformers_seps.train.cli import UsageError
from transformers_seps.train.evaluation import run_evaluation
from transformers_seps.train.model_card import (
    HUB_DATASETS,
    PIPELINE_TAG,
    model_index_results,
    render_trained_model_card,
)
from transformers_seps.train.training import run_training

__all__ = ["tiny_backbones"]  # a fixture of test_authors_layout, used here


def metrics(offset: float) -> dict[str, float]:
    """A report's metrics, each value different (so a swapped metric shows)."""
    return {key: offset + index for index, key in enumerate(METRIC_KEYS)}


def model_index_values(card: ModelCard) -> dict[str, tuple[float, dict]]:
    """`{metric name: (value, args)}` of a card's model-index, as huggingface_hub parses it."""
    return {result.metric_name: (result.metric_value, result.metric_args) for result in card.data.eval_results}


@pytest.mark.parametrize(("backbone", "dataset"), planned_releases())
def test_planned_cards_have_hub_metadata_and_no_results_of_ours(backbone: str, dataset: str, tmp_path: Path):
    card = render_model_card(backbone, dataset, repo_id="org/x")
    (tmp_path / "README.md").write_text(card, encoding="utf-8")
    metadata = metadata_load(tmp_path / "README.md")
    assert metadata["pipeline_tag"] == PIPELINE_TAG == ModelCard(card).data.pipeline_tag
    assert metadata["datasets"] == [HUB_DATASETS[dataset]]
    assert metadata["base_model"][1] == "google-bert/bert-base-uncased" and len(metadata["base_model"]) == 2
    assert "model-index" not in metadata  # no number of ours: the authors' are never machine-readable results


def test_model_index_of_a_coco_report_with_its_folds_and_protocol():
    report = {**metrics(10.0), "coco_1k": metrics(50.0), "coco_1k_folds": [metrics(50.0)] * 5}
    options = {"dataset": "coco"}
    checkpoint = OfficialCheckpoint(state_dict={}, options=options, epoch=27, best_rsum=571.23, iterations=99)
    card = ModelCard(
        render_model_card("vit-224", "coco", repo_id="org/seps", checkpoint=checkpoint, eval_results=report)
    )

    values = model_index_values(card)
    assert values["Image-to-text R@1"] == (report["i2t_r1"], {"dense_pairing": "image"})
    assert values["rSum (sum of the six recalls)"][0] == report["rsum"]
    assert values["1K folds (mean of 5): Text-to-image R@10"][0] == report["coco_1k"]["t2i_r10"]
    assert len(values) == 2 * len(METRIC_KEYS)
    result = card.data.eval_results[0]
    assert (result.task_type, result.metric_type, result.dataset_type) == (
        "image-text-retrieval",
        "recall",
        "yerevann/coco-karpathy",
    )
    assert result.dataset_name == "MS-COCO 5K test (Karpathy split), dense captions paired with their own images"
    assert card.data.model_name == "seps"
    assert "Our evaluation of these weights is under *Results*" in card.text
    assert f"| whole test set, the model's score (S) | {report['i2t_r1']:.1f} |" in card.text
    with pytest.raises(ValueError, match="pass their `checkpoint` too"):
        render_model_card("vit-224", "coco", repo_id="org/seps", eval_results=report)


def test_a_leak_audit_gives_its_honest_half_only():
    audit = {"honest": metrics(1.0), "query_ground_truth": metrics(90.0), "difference": metrics(89.0)}
    results = model_index_results(audit, "f30k")
    assert [result.metric_value for result in results] == [audit["honest"][key] for key in METRIC_KEYS]
    assert {result.dataset_type for result in results} == {"nlphuji/flickr30k"}
    without_dense = model_index_results(metrics(1.0), "f30k", dense_pairing="none")
    assert without_dense[0].dataset_name.endswith("without dense captions")
    with pytest.raises(ValueError, match="have no t2i_r10, rsum"):
        model_index_results({key: 1.0 for key in METRIC_KEYS[:5]}, "f30k")
    with pytest.raises(ValueError, match="dataset 'f30k' or 'coco', got 'synthetic'"):
        model_index_results(metrics(1.0), "synthetic")


def test_converter_card_gets_the_model_index_of_a_real_evaluation(tmp_path: Path):
    """Convert a tiny authors' checkpoint, evaluate it on the Flickr30K fixture, convert again with
    `--eval_results`: the card's model-index is that evaluation."""
    checkpoint, _ = write_authors_checkpoint("vit", tmp_path)
    vision, text = tiny_backbone_configs("vit")
    vision.save_pretrained(tmp_path / "vision_config")
    text.save_pretrained(tmp_path / "text_config")
    conversion = dict(
        checkpoint=str(checkpoint),
        tokenizer=TOKENIZER,
        vision_config=str(tmp_path / "vision_config"),
        text_config=str(tmp_path / "text_config"),
    )
    first = run_conversion(ConversionArguments(output_dir=str(tmp_path / "converted"), **conversion))
    data_root = copy_layout("f30k", tmp_path / "data")
    write_images(data_root, tmp_path / "data" / IMAGE_FOLDERS["f30k"])
    report_path = tmp_path / "report.json"
    report = run_evaluation(
        EvaluationArguments(model=str(first), data_root=str(data_root), output_json=str(report_path))
    )

    second = run_conversion(
        ConversionArguments(output_dir=str(tmp_path / "card"), eval_results=str(report_path), **conversion)
    )

    card = ModelCard.load(second / "README.md")
    assert card.data.pipeline_tag == PIPELINE_TAG and card.data.datasets == ["nlphuji/flickr30k"]
    values = model_index_values(card)
    assert values["Text-to-image R@1"] == (round(report["t2i_r1"], 2), {"dense_pairing": "image"})
    assert values["rSum (sum of the six recalls)"][0] == round(report["rsum"], 2)
    (tmp_path / "bad.json").write_text(json.dumps({"rsum": 1.0}))
    refused = ConversionArguments(output_dir=str(tmp_path / "x"), eval_results=str(tmp_path / "bad.json"), **conversion)
    with pytest.raises(UsageError, match=r"--eval_results .*bad.json: the evaluation results have no i2t_r1"):
        run_conversion(refused)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_training_writes_a_card_with_the_test_results(tiny_backbones, tmp_path: Path):
    data_root = copy_layout("f30k", tmp_path / "data")
    write_images(data_root, tmp_path / "data" / IMAGE_FOLDERS["f30k"])
    vision_model, text_model = tiny_backbones
    output_dir = tmp_path / "run"

    results = run_training(
        ModelArguments(vision_model=vision_model, text_model="all-minilm-l6-v2", embed_dim=16),
        DataArguments(dataset="f30k", data_root=str(data_root)),
        RetrievalTrainingArguments(
            output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=10, per_device_eval_batch_size=25
        ),
    )

    card = ModelCard.load(output_dir / "best" / "README.md")
    assert card.data.pipeline_tag == PIPELINE_TAG
    assert card.data.datasets == ["nlphuji/flickr30k"]
    # The local vision backbone has no Hub id; the bundled sentence encoder has one.
    assert card.data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert card.data.model_name == "run"
    values = model_index_values(card)
    assert [value for value, _ in values.values()] == [round(results[key], 2) for key in METRIC_KEYS]
    assert values["Image-to-text R@1"][0] == round(results["i2t_r1"], 2)
    assert all(args == {"dense_pairing": "image"} for _, args in values.values())
    assert "| best dev epoch (rSum) | 0 (" in card.text
    # The card names the score its model-index holds, beside SEPS's and the first stage's alone.
    score = "S" if not results["first_stage_weight"] else f"S + {results['first_stage_weight']:.3g} x"
    assert f"whole test set, the model's score ({score}" in card.text
    for name, prefix in (("SEPS alone (S)", "seps_"), ("first stage alone", "first_stage_")):
        row = next(line for line in card.text.splitlines() if line.startswith(f"| whole test set, {name} |"))
        assert row.endswith(f"| {results[prefix + 'rsum']:.1f} |")


@pytest.mark.parametrize(
    ("dataset", "dense_pairing", "claims", "not_claimed"),
    [
        ("synthetic", "none", ["every test image", "without dense captions"], ["Flickr30K", "MS-COCO", "own dense"]),
        ("f30k", "image", ["Flickr30K 1K test", "its own dense caption"], ["MS-COCO", "without dense"]),
        ("coco", "image", ["MS-COCO 5K test", "five 1K folds"], ["Flickr30K"]),
    ],
)
def test_the_card_states_the_protocol_of_its_own_data_and_pairing(
    dataset: str, dense_pairing: str, claims: list[str], not_claimed: list[str]
):
    card = render_trained_model_card(
        "run", "org/run", dataset, {"data": dataset}, eval_results=metrics(1.0), dense_pairing=dense_pairing
    )
    results = card.split("## Results", 1)[1].split("## How to score pairs", 1)[0].replace("\n", " ")
    for text in claims:
        assert text in results
    for text in not_claimed:
        assert text not in results
    assert "the the" not in results
