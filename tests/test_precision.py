"""Numerics: 16-bit inference and training, padding that never reaches a score, the official variant's training
gradients against the one-caption reference, and inputs generic Transformers code passes (token_type_ids)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_captions, tiny_model, tiny_model_with_processor
from reference_seps import reference_similarity

from transformers_seps.modeling_seps import gumbel_keep_mask, masked_softmax, min_max_normalize

HALF_DTYPES = (torch.float16, torch.bfloat16)
# Largest |score - float32 score| over pairs that keep the same patches. 16-bit backbones move the scores of these
# tiny models by up to ~1e-3 (fp16) and ~1e-2 (bf16). An aggregation softmax exponentiated in fp16 and shifted by
# the max over all patches (the bug this guards against) moved them by 0.014 ("sharp_aggregator", official), or
# made them NaN.
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2}
CASES = ("default", "sharp_aggregator", "saturated_scorer", "no_dense", "one_token")
NUM_IMAGES, NUM_CAPTIONS = 3, 4


def build_case(variant: str, sparse_ratio: float, case: str):
    """A tiny model and a batch (pixels, captions, dense captions or None) for one numerical situation."""
    model = tiny_model(variant, sparse_ratio=sparse_ratio)
    with torch.no_grad():
        if case == "sharp_aggregator":  # a learned scale spreads the aggregation logits beyond fp16's exp range
            for name in ("aggregator", "sparse_aggregator", "dense_aggregator"):
                if hasattr(model.head, name):
                    getattr(model.head, name).scale.fill_(14.0)
        if case == "saturated_scorer":  # s_p = 1 for every patch: a keep probability of exactly 1
            model.head.patch_scorer.mlp[-1].bias.fill_(1e4)
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(NUM_IMAGES, 3, 40, 40, generator=generator)
    if case == "one_token":
        ids, mask = random_captions(NUM_CAPTIONS, 6, seed=1, min_len=1)
        mask = torch.zeros_like(mask)
        mask[:, 0] = 1
    else:
        ids, mask = random_captions(NUM_CAPTIONS, 7, seed=1)
    dense = None if case == "no_dense" else random_captions(NUM_IMAGES, 12, seed=2)
    return model, pixels, (ids, mask), dense


def run(model, pixels, captions, dense, **kwargs):
    dense_kwargs = {} if dense is None else {"dense_input_ids": dense[0], "dense_attention_mask": dense[1]}
    return model(pixels, *captions, **dense_kwargs, **kwargs)


def assert_close_where_selection_agrees(output, reference, tolerance: float) -> None:
    """Scores within `tolerance` of float32 for every pair that keeps the same patches (a top-K decision between
    two patches whose scores differ by less than 16-bit rounding may flip); most pairs must keep the same."""
    agrees = (output.sparse_keep_mask == reference.sparse_keep_mask).all(dim=-1)
    if reference.dense_keep_mask is not None:
        agrees &= (output.dense_keep_mask == reference.dense_keep_mask).all(dim=-1, keepdim=True)
    assert agrees.float().mean() >= 0.5, f"{int((~agrees).sum())} pairs select other patches than in float32"
    difference = (output.logits_per_image.float() - reference.logits_per_image).abs()
    assert difference[agrees].max() <= tolerance, difference


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sparse_ratio", [0.5, 1.0])
def test_16_bit_inference_is_finite_and_close_to_float32(variant, sparse_ratio, case):
    if case == "saturated_scorer" and variant == "official":
        pytest.skip("the official variant has no patch scorer")
    model, pixels, captions, dense = build_case(variant, sparse_ratio, case)
    with torch.no_grad():
        reference = run(model, pixels, captions, dense)
        assert torch.isfinite(reference.logits_per_image).all()
        for dtype in HALF_DTYPES:
            with torch.autocast("cpu", dtype=dtype):
                autocast = run(model, pixels, captions, dense)
            half_model = build_case(variant, sparse_ratio, case)[0].to(dtype)
            cast = run(half_model, pixels.to(dtype), captions, dense)
            assert cast.image_embeds.dtype == dtype  # the backbones did run in 16 bits
            for output in (autocast, cast):
                assert output.logits_per_image.dtype == torch.float32  # the head computes in float32
                assert torch.isfinite(output.logits_per_image).all(), (dtype, output.logits_per_image)
                assert_close_where_selection_agrees(output, reference, TOLERANCE[dtype])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sparse_ratio", [0.5, 1.0])
def test_autocast_training_step_has_finite_loss_and_gradients(variant, sparse_ratio, case):
    if case == "saturated_scorer" and variant == "official":
        pytest.skip("the official variant has no patch scorer")
    for dtype in HALF_DTYPES:
        model, pixels, captions, dense = build_case(variant, sparse_ratio, case)
        model.train()
        captions = tuple(tensor[:NUM_IMAGES] for tensor in captions)  # paired: caption k describes image k
        with torch.autocast("cpu", dtype=dtype):
            output = run(model, pixels, captions, dense, return_loss=True)
        output.loss.backward()
        assert torch.isfinite(output.loss), dtype
        head = model.head.aggregator if variant == "official" else model.head.sparse_aggregator
        assert head.mlp[-1].weight.grad.abs().sum() > 0  # the gradient reaches the head ...
        for name, parameter in model.named_parameters():
            if parameter.grad is not None:  # ... and is finite everywhere
                assert torch.isfinite(parameter.grad).all(), (dtype, name)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_gumbel_mask_of_a_saturated_probability_has_a_finite_gradient(dtype):
    probability = torch.tensor([0.9999, 1.0, 0.0, 0.5], dtype=dtype, requires_grad=True)
    mask = gumbel_keep_mask(probability, tau=1.0)
    mask.sum().backward()
    assert mask.dtype == dtype and set(mask.tolist()) <= {0.0, 1.0}
    assert torch.isfinite(probability.grad).all(), probability.grad


@pytest.mark.parametrize("straight_through", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES])
def test_softmax_over_kept_entries_never_underflows(dtype, straight_through):
    """The kept entries lie 200 below a dropped one: exp(-200) is 0 even in float32, the softmax is not. A row
    that keeps nothing gets zero weights; a straight-through mask gets a finite gradient."""
    logits = torch.tensor([[200.0, 0.0, -1.0, 1.0], [3.0, 1.0, 2.0, 0.0]], dtype=dtype)
    keep = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=dtype, requires_grad=straight_through)
    expected = torch.softmax(torch.tensor([0.0, -1.0, 1.0]), dim=-1)
    weights = masked_softmax(logits, keep)
    assert weights.dtype == dtype and weights[0, 0] == 0 and (weights[1] == 0).all()
    torch.testing.assert_close(weights[0, 1:].float(), expected, atol=1e-2, rtol=0)
    if straight_through:
        (weights * torch.arange(4.0, dtype=dtype)).sum().backward()
        assert torch.isfinite(keep.grad).all() and keep.grad[0, 0] != 0, keep.grad
    constant = min_max_normalize(torch.full((2, 5), 0.3, dtype=dtype))
    assert constant.dtype == dtype and (constant == 0).all()


def test_sharp_aggregator_matches_the_one_caption_reference(variant):
    """Aggregation logits spread over ~1000: a softmax shifted by the max over ALL patches underflows for the
    kept ones (even in float32); the reference's softmax over the kept patches does not."""
    model = tiny_model(variant, seed=4)
    head = model.head
    aggregators = [head.aggregator] if variant == "official" else [head.sparse_aggregator, head.dense_aggregator]
    with torch.no_grad():
        for aggregator in aggregators:
            aggregator.scale.fill_(300.0)
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(3, model.config.num_patches + 1, model.config.embed_dim, generator=generator)
    texts = torch.randn(4, 6, model.config.embed_dim, generator=generator)
    dense = torch.randn(3, 9, model.config.embed_dim, generator=generator)
    text_mask, dense_mask = torch.ones(4, 6, dtype=torch.long), torch.ones(3, 9, dtype=torch.long)
    with torch.no_grad():
        fast = model.similarity(images, texts, text_mask, dense, dense_mask)
        slow = reference_similarity(model, images, texts, text_mask, dense, dense_mask)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------- padding


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), 1e30])
def test_values_at_padded_positions_never_reach_a_score(variant, training, poison):
    model = tiny_model(variant).train(training)
    generator = torch.Generator().manual_seed(6)
    dim = model.config.embed_dim
    images = torch.randn(3, model.config.num_patches + 1, dim, generator=generator)
    _, text_mask = random_captions(4, 8, seed=7, min_len=2)
    _, dense_mask = random_captions(3, 10, seed=8, min_len=2)
    assert (text_mask == 0).any() and (dense_mask == 0).any()
    clean_texts = torch.randn(4, 8, dim, generator=generator) * text_mask[..., None]
    clean_dense = torch.randn(3, 10, dim, generator=generator) * dense_mask[..., None]
    poisoned_texts = clean_texts.masked_fill(text_mask[..., None] == 0, poison)
    poisoned_dense = clean_dense.masked_fill(dense_mask[..., None] == 0, poison)
    scores = []
    for texts, dense in ((clean_texts, clean_dense), (poisoned_texts, poisoned_dense)):
        torch.manual_seed(9)  # the same Gumbel decisions in training mode
        scores.append(model.similarity(images, texts, text_mask, dense, dense_mask))
    assert torch.isfinite(scores[0]).all()
    torch.testing.assert_close(scores[1], scores[0], atol=0, rtol=0)


# ------------------------------------------------------------------------------- official training gradients


@pytest.mark.parametrize("detach_selected_patches", [True, False])
def test_official_gradients_match_the_one_caption_reference(detach_selected_patches):
    """With `detach_selected_patches` (the authors' torch.no_grad()), the spatial patches get no gradient
    through the kept and fused tokens, [CLS] and the aggregation MLP still do; in both settings every gradient
    equals the reference's."""
    model = tiny_model("official", seed=10, detach_selected_patches=detach_selected_patches).train()
    generator = torch.Generator().manual_seed(11)
    dim = model.config.embed_dim
    images = torch.randn(3, model.config.num_patches + 1, dim, generator=generator)
    texts = torch.randn(4, 6, dim, generator=generator)
    dense = torch.randn(3, 9, dim, generator=generator)
    _, text_mask = random_captions(4, 6, seed=12)
    dense_mask = torch.ones(3, 9, dtype=torch.long)
    loss_weights = torch.randn(3, 4, generator=generator)
    gradients = []
    for score in (model.similarity, lambda *inputs: reference_similarity(model, *inputs)):
        inputs = [tensor.clone().requires_grad_(True) for tensor in (images, texts, dense)]
        model.zero_grad()
        (score(inputs[0], inputs[1], text_mask, inputs[2], dense_mask) * loss_weights).sum().backward()
        head = {name: parameter.grad.clone() for name, parameter in model.head.aggregator.named_parameters()}
        gradients.append(([tensor.grad for tensor in inputs], head))
    (model_inputs, model_head), (reference_inputs, reference_head) = gradients
    for name, gradient, expected in zip(("images", "texts", "dense"), model_inputs, reference_inputs, strict=True):
        torch.testing.assert_close(gradient, expected, atol=1e-5, rtol=1e-4, msg=name)
    for name, expected in reference_head.items():
        assert expected.abs().sum() > 0, name
        torch.testing.assert_close(model_head[name], expected, atol=1e-5, rtol=1e-4, msg=name)
    patch_gradient = model_inputs[0][:, 1:]
    assert model_inputs[0][:, 0].abs().sum() > 0  # [CLS]
    assert (patch_gradient.abs().sum() == 0) == detach_selected_patches


def test_detaching_the_selected_patches_changes_no_score_and_no_weight_name():
    detached, attached = (tiny_model("official", seed=13, detach_selected_patches=flag) for flag in (True, False))
    assert detached.state_dict().keys() == attached.state_dict().keys()
    pixels = torch.randn(2, 3, 40, 40)
    ids, mask = random_captions(3, 6, seed=14)
    with torch.no_grad():
        torch.testing.assert_close(
            detached(pixels, ids, mask).logits_per_image, attached(pixels, ids, mask).logits_per_image
        )


# ------------------------------------------------------------------------------------------- generic inputs


def test_forward_passes_token_type_ids_to_the_text_backbone(variant):
    model, processor = tiny_model_with_processor(variant)
    tokens = processor.tokenizer(["a dog on the grass", "two cats"], padding=True, return_tensors="pt")
    assert "token_type_ids" in tokens
    pixels = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        with_types = model(pixel_values=pixels, **tokens).logits_per_image
        ones = {**tokens, "token_type_ids": torch.ones_like(tokens["input_ids"])}
        with_other_types = model(pixel_values=pixels, **ones).logits_per_image
        without = model(pixels, tokens["input_ids"], tokens["attention_mask"]).logits_per_image
    # The tokenizer's segment ids (all 0 for a caption) are the text backbone's default; other ones change it.
    torch.testing.assert_close(with_types, without, atol=0, rtol=0)
    assert not torch.allclose(with_other_types, without)


# ------------------------------------------------------------------------------------------ training script

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_retrieval.py"


def test_fp16_training_on_cpu_is_refused_before_any_work(tmp_path):
    from transformers_seps.train.arguments import DataArguments, ModelArguments, RetrievalTrainingArguments
    from transformers_seps.train.training import run_training

    with pytest.raises(ValueError, match="--mixed_precision fp16 needs a GPU"):
        run_training(
            ModelArguments(vision_model="vit-scratch"),
            DataArguments(data_root=str(tmp_path / "data")),
            RetrievalTrainingArguments(output_dir=str(tmp_path / "run"), mixed_precision="fp16"),
        )
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_training_script_runs_in_bf16_on_cpu(tmp_path):
    command = [
        sys.executable, str(SCRIPT),
        "--mixed_precision", "bf16",
        "--output_dir", str(tmp_path / "run"),
        "--data_root", str(tmp_path / "data"),
        "--generate_synthetic",
        "--synthetic_num_train", "16",
        "--synthetic_num_dev", "8",
        "--synthetic_num_test", "8",
        "--synthetic_image_size", "32",
        "--vision_model", "vit-scratch",
        "--image_size", "32",
        "--embed_dim", "32",
        "--per_device_train_batch_size", "8",
        "--num_train_epochs", "1",
        "--eval_test", "false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    history = json.loads((tmp_path / "run" / "dev_history.json").read_text())
    assert len(history) == 1 and 0 <= history[0]["rsum"] <= 600


@pytest.mark.slow
def test_bench_similarity_reports_bfloat16_against_the_float32_reference():
    command = [
        sys.executable, "bench_similarity.py", "--dtype", "bfloat16", "--images", "4", "--captions", "6",
        "--reference_captions", "2", "--embed_dim", "64",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=SCRIPT.parents[1] / "benchmarks", capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bfloat16" in result.stdout.splitlines()[0]
    rows = {line.split("|")[1].strip(): line.split("|")[-2] for line in result.stdout.splitlines() if "| " in line}
    for row in ("official caption branch", "paper caption branch", "paper with dense captions"):
        assert float(rows[row]) < TOLERANCE[torch.bfloat16], result.stdout
