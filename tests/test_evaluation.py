import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import run_example, tiny_model_with_processor

from transformers_seps.metrics import (
    METRIC_KEYS,
    check_five_captions_per_image,
    fold_metrics,
    mean_metrics,
    recall_metrics,
    retrieval_metrics,
    retrieval_ranks,
)
from transformers_seps.train.data import load_retrieval_split
from transformers_seps.train.evaluation import encode_split, score_split


def test_ranks_hand_computed():
    # 3 images, 2 captions each (captions 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2).
    caption_to_image = [0, 0, 1, 1, 2, 2]
    sims = np.array(
        [
            [0.9, 0.1, 0.2, 0.3, 0.0, 0.0],  # image 0: its caption 0 is first -> rank 1
            [0.5, 0.4, 0.3, 0.1, 0.6, 0.0],  # image 1: best own 0.3; 0.5, 0.4, 0.6 ahead -> rank 4
            [0.2, 0.2, 0.9, 0.8, 0.1, 0.7],  # image 2: best own 0.7; 0.9, 0.8 ahead -> rank 3
        ]
    )
    i2t, t2i = retrieval_ranks(sims, caption_to_image)
    assert i2t.tolist() == [1, 4, 3]
    # caption 0: image 0 has 0.9, best -> 1; caption 1: 0.1 vs 0.4, 0.2 -> 3; caption 2: 0.3 vs 0.2, 0.9 -> 2;
    # caption 3: 0.1 vs 0.3, 0.8 -> 3; caption 4: 0.1 vs 0.0, 0.6 -> 2; caption 5: 0.7 vs 0.0, 0.0 -> 1.
    assert t2i.tolist() == [1, 3, 2, 3, 2, 1]
    metrics = recall_metrics(i2t, t2i)
    assert metrics["i2t_r1"] == pytest.approx(100 / 3)
    assert metrics["i2t_r5"] == pytest.approx(100.0)
    assert metrics["t2i_r1"] == pytest.approx(100 * 2 / 6)
    assert metrics["t2i_medr"] == 2.0 and metrics["t2i_meanr"] == pytest.approx(2.0)
    assert metrics["i2t_medr"] == 3.0 and metrics["i2t_meanr"] == pytest.approx(8 / 3)
    assert metrics["rsum"] == pytest.approx(sum(metrics[key] for key in METRIC_KEYS[:-1]))


def test_ties_count_against_the_query():
    # A constant model must get no credit: every wrong candidate ties with the right one.
    sims = np.zeros((4, 8))
    i2t, t2i = retrieval_ranks(sims, [0, 0, 1, 1, 2, 2, 3, 3])
    assert i2t.tolist() == [7, 7, 7, 7]  # 6 wrong captions tie with the best own one
    assert t2i.tolist() == [4] * 8  # 3 wrong images tie
    # A tie between two right captions does not hurt.
    sims = np.array([[0.5, 0.5, 0.1], [0.3, 0.2, 0.3]])
    i2t, _ = retrieval_ranks(sims, [0, 0, 1])
    assert i2t.tolist() == [1, 2]  # image 1: caption 0 (wrong) ties with its own caption 2


def test_perfect_and_reversed_models():
    rng = np.random.default_rng(0)
    caption_to_image = np.repeat(np.arange(20), 5)
    perfect = rng.random((20, 100)) - 10 * (caption_to_image[None] != np.arange(20)[:, None])
    metrics = retrieval_metrics(perfect, caption_to_image)
    assert metrics["rsum"] == pytest.approx(600.0)
    assert metrics["i2t_medr"] == metrics["t2i_medr"] == 1.0
    reversed_metrics = retrieval_metrics(-perfect, caption_to_image)
    assert reversed_metrics["rsum"] == 0.0
    assert reversed_metrics["t2i_medr"] == 20.0 and reversed_metrics["i2t_medr"] == 96.0


@pytest.mark.parametrize(
    ("sims", "targets", "message"),
    [
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), [0, 1], "NaN"),
        (np.zeros((2, 3)), [0, 1], "one per caption"),
        (np.zeros((2, 3)), [0, 0, 0], "images \\[1\\] have none"),
        (np.zeros((2, 2)), [0, 2], "must index the 2 images"),
    ],
)
def test_bad_input(sims, targets, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(sims, targets)


# --------------------------------------------------------------------------------------------------------------
# Protocols, encoding, scoring, pairings, the evaluation script
# --------------------------------------------------------------------------------------------------------------


def test_coco_folds_are_consecutive_blocks_of_1000_images():
    rng = np.random.default_rng(1)
    targets = np.repeat(np.arange(2000), 5)
    sims = rng.random((2000, 10000))
    sims[np.arange(1000), np.arange(0, 5000, 5)] += 10  # fold 0: every image's first caption wins
    folds = fold_metrics(sims, targets)
    assert len(folds) == 2
    assert folds[0]["i2t_r1"] == 100.0 and folds[1]["i2t_r1"] < 5.0
    expected_second = retrieval_metrics(sims[1000:, 5000:], np.repeat(np.arange(1000), 5))
    assert folds[1] == expected_second
    assert mean_metrics(folds)["i2t_r1"] == pytest.approx((100.0 + folds[1]["i2t_r1"]) / 2)


def test_five_caption_protocols_reject_other_counts():
    with pytest.raises(ValueError, match="exactly 5 captions per image"):
        check_five_captions_per_image([0, 0, 0, 0, 0, 1, 1, 1, 1], 2)
    with pytest.raises(ValueError, match="image-major order"):
        check_five_captions_per_image([0, 1] * 5, 2)
    with pytest.raises(ValueError, match="folds of 1000"):
        fold_metrics(np.zeros((3, 15)), np.repeat(np.arange(3), 5))


@pytest.fixture(scope="module")
def encoded_tiny(tiny_synthetic):
    model, processor = tiny_model_with_processor("official")
    split = load_retrieval_split(tiny_synthetic, "synthetic", "test")
    return model, split, encode_split(model, processor, split, batch_size=3, progress=False)


@torch.no_grad()
def test_encode_split_encodes_each_image_and_caption_once(encoded_tiny):
    model, split, encoded = encoded_tiny
    assert encoded.image_embeds.shape[0] == split.num_images == 8
    assert encoded.text_embeds.shape[0] == encoded.text_mask.shape[0] == split.num_captions == 40
    assert encoded.dense_embeds.shape[0] == 8
    # Batches of 3 are padded to one common length without changing any caption's scores.
    direct = model.encode_text(
        *(lambda b: (b["input_ids"], b["attention_mask"]))(
            tiny_model_with_processor("official")[1](text=split.captions[:3], return_tensors="pt")
        )
    )
    length = direct.shape[1]
    torch.testing.assert_close(encoded.text_embeds[:3, :length], direct, atol=1e-5, rtol=0)
    assert (encoded.text_mask[:3, length:] == 0).all()


@torch.no_grad()
def test_honest_pairing_gives_each_image_its_own_dense_caption(encoded_tiny):
    model, split, encoded = encoded_tiny
    scores = score_split(model, encoded, "image", images_per_block=3, progress=False)
    direct = model.similarity(
        encoded.image_embeds, encoded.text_embeds, encoded.text_mask, encoded.dense_embeds, encoded.dense_mask
    )
    np.testing.assert_allclose(scores, direct.numpy(), atol=1e-5)
    none = score_split(model, encoded, "none", images_per_block=3, progress=False)
    np.testing.assert_allclose(
        none, model.similarity(encoded.image_embeds, encoded.text_embeds, encoded.text_mask), atol=1e-5, rtol=0
    )


@torch.no_grad()
@pytest.mark.parametrize("variant", ["official", "paper"])
def test_query_ground_truth_pairing_uses_the_caption_s_ground_truth_dense_caption(tiny_synthetic, variant):
    model, processor = tiny_model_with_processor(variant)
    split = load_retrieval_split(tiny_synthetic, "synthetic", "test")
    encoded = encode_split(model, processor, split, batch_size=4, progress=False)
    with pytest.warns(UserWarning, match="label leak"):
        leaky = score_split(model, encoded, "query_ground_truth", images_per_block=3, progress=False)
    # One caption at a time: every image gets the dense caption of the caption's ground-truth image.
    for caption in (0, 7, 39):
        truth = split.caption_to_image[caption]
        dense = encoded.dense_embeds[truth : truth + 1].expand(8, -1, -1)
        mask = encoded.dense_mask[truth : truth + 1].expand(8, -1)
        expected = model.similarity(
            encoded.image_embeds,
            encoded.text_embeds[caption : caption + 1],
            encoded.text_mask[caption : caption + 1],
            dense,
            mask,
        )[:, 0]
        np.testing.assert_allclose(leaky[:, caption], expected.numpy(), atol=1e-5)
    honest = score_split(model, encoded, "image", progress=False)
    assert np.abs(leaky - honest).max() > 1e-4


def test_pairings_that_need_dense_captions_fail_without_them(tiny_synthetic):
    model, processor = tiny_model_with_processor("paper")
    split = load_retrieval_split(tiny_synthetic, "synthetic", "test", dense_captions="ignore")
    with pytest.raises(ValueError, match="has no dense captions"):
        encode_split(model, processor, split, progress=False)
    encoded = encode_split(model, processor, split, use_dense=False, progress=False)
    with pytest.raises(ValueError, match="needs dense captions"):
        score_split(model, encoded, "image", progress=False)


def run_script(*arguments: str, processes: int = 1) -> subprocess.CompletedProcess:
    return run_example("evaluate_retrieval.py", *arguments, processes=processes)


@pytest.mark.slow
def test_script_two_processes_give_the_matrix_of_one(saved_models, tiny_synthetic, tmp_path):
    outputs = {}
    for processes in (1, 2):
        sims, report = tmp_path / f"sims{processes}.npy", tmp_path / f"report{processes}.json"
        result = run_script(
            "--model", str(saved_models["paper"]), "--dataset", "synthetic", "--data_root", str(tiny_synthetic),
            "--split", "test", "--images_per_block", "3", "--batch_size", "3",
            "--output_json", str(report), "--save_sims", str(sims), processes=processes,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"evaluating on {processes} process(es)" in result.stdout
        outputs[processes] = np.load(sims), json.loads(report.read_text())
    assert outputs[1][0].shape == (8, 40)
    np.testing.assert_allclose(outputs[2][0], outputs[1][0], atol=1e-5)
    scorer = {"name": "model", "score": "S + 0 * G"}
    assert outputs[1][1] == retrieval_metrics(outputs[1][0], np.repeat(np.arange(8), 5)) | {"scorer": scorer}
    assert set(METRIC_KEYS) <= set(outputs[2][1])


@pytest.mark.slow
def test_script_leak_audit_reports_both_pairings(saved_models, tiny_synthetic, tmp_path):
    report = tmp_path / "audit.json"
    result = run_script(
        "--model", str(saved_models["official"]), "--dataset", "synthetic", "--data_root", str(tiny_synthetic),
        "--dense_pairing", "query_ground_truth", "--output_json", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "label leak" in result.stderr
    assert "Leak audit" in result.stdout and "difference" in result.stdout
    audit = json.loads(report.read_text())
    assert set(audit) == {"honest", "query_ground_truth", "difference", "scorer"}
    assert audit["scorer"] == {"name": "seps", "score": "S"}  # the audit compares S under both pairings
    assert audit["difference"]["rsum"] == pytest.approx(audit["query_ground_truth"]["rsum"] - audit["honest"]["rsum"])


@pytest.mark.slow
def test_script_errors(saved_models, tiny_synthetic, tmp_path):
    missing = run_script(
        "--model", str(tmp_path / "nothing-here"), "--dataset", "synthetic", "--data_root", str(tiny_synthetic)
    )
    assert missing.returncode != 0 and "model not found" in missing.stderr
    no_dense = tmp_path / "no_dense"
    shutil.copytree(tiny_synthetic, no_dense)
    (no_dense / "synthetic_test.jsonl").unlink()
    result = run_script("--model", str(saved_models["paper"]), "--dataset", "synthetic", "--data_root", str(no_dense))
    assert result.returncode != 0 and "synthetic_test.jsonl" in result.stderr


@pytest.mark.slow
def test_script_ranks_by_the_chosen_scorer(saved_models, tiny_synthetic, tmp_path):
    """--scorer model (the default) ranks by S + w * G, seps by S alone, first_stage by G alone."""
    from transformers_seps import SepsModel, SepsProcessor
    from transformers_seps.train.arguments import SCORERS, EvaluationArguments
    from transformers_seps.train.evaluation import run_evaluation

    folder = tmp_path / "fused"
    model = SepsModel.from_pretrained(saved_models["paper"])
    model.config.first_stage_weight = 0.5
    model.save_pretrained(folder)
    SepsProcessor.from_pretrained(saved_models["paper"]).save_pretrained(folder)
    sims, reports = {}, {}
    for scorer in SCORERS:
        sims[scorer] = tmp_path / f"{scorer}.npy"
        reports[scorer] = run_evaluation(
            EvaluationArguments(
                model=str(folder), data_root=str(tiny_synthetic), scorer=scorer, save_sims=str(sims[scorer])
            )
        )
    fused, seps, first_stage = (np.load(sims[scorer]) for scorer in SCORERS)
    np.testing.assert_allclose(fused, seps + 0.5 * first_stage, atol=1e-5)
    assert not np.allclose(seps, first_stage)
    assert [reports[scorer]["scorer"]["score"] for scorer in SCORERS] == ["S + 0.5 * G", "S", "G"]
    assert reports["first_stage"]["rsum"] == retrieval_metrics(first_stage, np.repeat(np.arange(8), 5))["rsum"]
