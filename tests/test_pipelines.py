"""The calibrated logit scale (logits = logit_scale * S, fit on a dev split) and the pipelines: Transformers'
`zero-shot-image-classification` and our `image-text-matching` (also as remote code from a saved folder)."""

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_captions, tiny_config, tiny_model, tiny_model_with_processor
from PIL import Image
from transformers import pipeline

from transformers_seps import SepsConfig, SepsModel, SepsProcessor, score_pairs
from transformers_seps.calibration import MAX_LOGIT_SCALE, calibration_loss, fit_logit_scale
from transformers_seps.pipelines import SepsImageTextMatchingPipeline

LABELS = ["a red heart", "a blue diamond", "a green circle"]
TEMPLATE = "This is a photo of {}."


def random_images(count: int, seed: int) -> list[Image.Image]:
    generator = np.random.default_rng(seed)
    return [Image.fromarray(generator.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(count)]


def with_logit_scale(model: SepsModel, logit_scale: float) -> SepsModel:
    scaled = copy.deepcopy(model)
    scaled.config.logit_scale = logit_scale
    return scaled


# --------------------------------------------------------------------------------------------------------------
# The logit scale in the model
# --------------------------------------------------------------------------------------------------------------


def test_logit_scale_scales_the_logits_only_not_the_loss_nor_the_similarity(variant):
    model = tiny_model(variant, seed=1)
    scaled = with_logit_scale(model, 12.5)
    pixels = torch.randn(4, 3, 40, 40)
    ids, mask = random_captions(4, 7, seed=2)
    with torch.no_grad():
        raw = model(pixels, ids, mask, return_loss=True)
        out = scaled(pixels, ids, mask, return_loss=True)
        image_embeds, text_embeds = model.encode_image(pixels), model.encode_text(ids, mask)
        similarity = model.similarity(image_embeds, text_embeds, mask)
        scaled_similarity = scaled.similarity(image_embeds, text_embeds, mask)
    torch.testing.assert_close(out.logits_per_image, 12.5 * similarity)
    torch.testing.assert_close(out.logits_per_text, 12.5 * similarity.t())
    torch.testing.assert_close(raw.logits_per_image, similarity)  # the default 1.0: the raw scores
    assert torch.equal(scaled_similarity, similarity)
    assert torch.equal(out.loss, raw.loss) and torch.equal(out.alignment_loss, raw.alignment_loss)


def test_score_pairs_returns_the_raw_scores_of_a_calibrated_model():
    model, processor = tiny_model_with_processor("paper", seed=4)
    images = random_images(2, seed=5)
    plain = score_pairs(model, processor, images, LABELS)
    calibrated = score_pairs(with_logit_scale(model, 30.0), processor, images, LABELS)
    torch.testing.assert_close(calibrated, plain, rtol=0, atol=0)
    with torch.no_grad():
        logits = with_logit_scale(model, 30.0)(**processor(images=images, text=LABELS)).logits_per_image
    torch.testing.assert_close(logits, 30.0 * plain)


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "10", True])
def test_logit_scale_must_be_a_positive_number(value):
    with pytest.raises(ValueError, match=f"logit_scale must be > 0, got {value!r}"):
        tiny_config(logit_scale=value)


def test_logit_scale_survives_save_and_load(tmp_path):
    with_logit_scale(tiny_model("official"), 17.25).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["logit_scale"] == 17.25
    assert SepsConfig.from_pretrained(tmp_path).logit_scale == 17.25


# --------------------------------------------------------------------------------------------------------------
# Fitting the scale
# --------------------------------------------------------------------------------------------------------------


def noisy_split(num_images: int = 12, captions_per_image: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a model that ranks right pairs higher on average, with overlap: a finite best scale."""
    generator = np.random.default_rng(seed)
    caption_to_image = np.repeat(np.arange(num_images), captions_per_image)
    similarity = generator.normal(0.0, 0.1, (num_images, num_images * captions_per_image))
    similarity[caption_to_image, np.arange(caption_to_image.size)] += 0.15
    return similarity, caption_to_image


def test_the_fitted_scale_minimises_the_dev_cross_entropy():
    similarity, caption_to_image = noisy_split()
    fitted = fit_logit_scale(similarity, caption_to_image)
    best = calibration_loss(similarity, caption_to_image, fitted)
    dense_grid = np.exp(np.linspace(np.log(0.01), np.log(MAX_LOGIT_SCALE), 4001))
    assert best <= min(calibration_loss(similarity, caption_to_image, scale) for scale in dense_grid) + 1e-9
    assert 1.0 < fitted < MAX_LOGIT_SCALE
    assert best < calibration_loss(similarity, caption_to_image, 1.0)


def test_the_fitted_scale_follows_the_scores_units():
    """Scores ten times larger need a scale ten times smaller; a torch tensor is read like an array."""
    similarity, caption_to_image = noisy_split(seed=1)
    fitted = fit_logit_scale(similarity, caption_to_image)
    assert fit_logit_scale(torch.from_numpy(10 * similarity), caption_to_image) == pytest.approx(fitted / 10, rel=1e-6)


def test_a_perfectly_separated_split_gets_a_scale_whose_loss_vanishes():
    caption_to_image = np.repeat(np.arange(4), 2)
    similarity = np.where(caption_to_image[None] == np.arange(4)[:, None], 1.0, 0.0)  # a gap of 1 everywhere
    fitted = fit_logit_scale(similarity, caption_to_image)
    assert calibration_loss(similarity, caption_to_image, fitted) < 1e-12
    assert fitted > fit_logit_scale(*noisy_split())


def test_calibration_refuses_mismatched_inputs():
    similarity, caption_to_image = noisy_split(num_images=3)
    with pytest.raises(ValueError, match="caption_to_image must have 15 entries"):
        fit_logit_scale(similarity, caption_to_image[:-1])
    with pytest.raises(ValueError, match=r"images \[2\] have none"):
        fit_logit_scale(similarity[:, :10], caption_to_image[:10])
    with pytest.raises(ValueError, match="logit_scale must be a number > 0, got 0"):
        calibration_loss(similarity, caption_to_image, 0)


# --------------------------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny model with a logit scale of 40, saved with its processor."""
    model, processor = tiny_model_with_processor("paper", seed=6)
    model.config.logit_scale = 40.0
    folder = tmp_path_factory.mktemp("calibrated")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


def test_zero_shot_pipeline_softmaxes_the_scaled_scores(calibrated):
    model, processor, folder = calibrated
    image = random_images(1, seed=7)[0]
    expected = torch.softmax(40.0 * score_pairs(model, processor, image, [TEMPLATE.format(x) for x in LABELS])[0], 0)
    from_folder = pipeline("zero-shot-image-classification", model=str(folder))
    from_objects = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    assert isinstance(from_folder.model, SepsModel)
    for classifier in (from_folder, from_objects):
        result = classifier(image, candidate_labels=LABELS)
        probabilities = {entry["label"]: entry["score"] for entry in result}
        torch.testing.assert_close(torch.tensor([probabilities[label] for label in LABELS]), expected)


def test_zero_shot_pipeline_truncates_a_long_label_as_the_processor_does(calibrated):
    """Issue 24: a label longer than the text model's limit made the model refuse it, suggesting a processor
    setting the pipeline does not use; the labels are now truncated at the model's limit, as captions are."""
    model, processor, folder = calibrated
    image = random_images(1, seed=11)[0]
    labels = [" ".join(["a small red heart"] * 200), "a blue diamond"]  # 800 words: beyond 512 tokens
    assert len(processor.tokenizer(labels[0])["input_ids"]) > model.config.max_text_length
    expected = torch.softmax(40.0 * score_pairs(model, processor, image, labels)[0], 0)
    result = pipeline("zero-shot-image-classification", model=str(folder))(
        image, candidate_labels=labels, hypothesis_template="{}"
    )
    probabilities = {entry["label"]: entry["score"] for entry in result}
    torch.testing.assert_close(torch.tensor([probabilities[label] for label in labels]), expected)


def test_zero_shot_pipeline_of_another_model_runs_transformers_code(tmp_path):
    """The task's class is a subclass of Transformers' that changes nothing for a model other than SEPS."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, ZeroShotImageClassificationPipeline

    from transformers_seps.pipelines import SepsZeroShotImageClassificationPipeline

    torch.manual_seed(0)
    tiny = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text, vision = {**tiny, "vocab_size": 30522}, {**tiny, "image_size": 32, "patch_size": 16}
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).eval()
    _, processor = tiny_model_with_processor("paper")
    parts = {"tokenizer": processor.tokenizer, "image_processor": CLIPImageProcessor(size=32, crop_size=32)}
    ours = pipeline("zero-shot-image-classification", model=clip, **parts)
    assert type(ours) is SepsZeroShotImageClassificationPipeline
    theirs = ZeroShotImageClassificationPipeline(model=clip, **parts)
    image = random_images(1, seed=12)[0]
    assert ours(image, candidate_labels=LABELS) == theirs(image, candidate_labels=LABELS)


def test_image_text_matching_pipeline_scores_and_ranks_captions(calibrated):
    model, processor, _ = calibrated
    images = random_images(2, seed=8)
    matcher = pipeline("image-text-matching", model=model, processor=processor)
    assert isinstance(matcher, SepsImageTextMatchingPipeline)
    expected = score_pairs(model, processor, images, LABELS)  # raw S, not 40 * S

    in_order = matcher(images[0], text=LABELS)
    assert [entry["text"] for entry in in_order] == LABELS
    torch.testing.assert_close(torch.tensor([entry["score"] for entry in in_order]), expected[0])

    ranked = matcher(images, text=LABELS, top_k=2)
    assert len(ranked) == 2
    for row, result in zip(expected, ranked, strict=True):
        best = row.topk(2)
        assert [entry["text"] for entry in result] == [LABELS[i] for i in best.indices.tolist()]
        torch.testing.assert_close(torch.tensor([entry["score"] for entry in result]), best.values)

    one = matcher(images[1], text=LABELS[2])
    assert [entry["text"] for entry in one] == [LABELS[2]]
    torch.testing.assert_close(torch.tensor(one[0]["score"]), expected[1, 2], atol=1e-5, rtol=0)


def test_image_text_matching_pipeline_refuses_bad_arguments(calibrated):
    model, processor, _ = calibrated
    matcher = pipeline("image-text-matching", model=model, processor=processor)
    image = random_images(1, seed=9)[0]
    with pytest.raises(ValueError, match="needs `text`"):
        matcher(image)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1, got 0"):
        matcher(image, text=LABELS, top_k=0)
    with pytest.raises(ValueError, match="text"):
        matcher(image, text=[])
    with pytest.raises(ValueError, match="needs the model's processor"):
        SepsImageTextMatchingPipeline(model=model, tokenizer=processor.tokenizer)


@pytest.mark.slow
def test_a_saved_matching_pipeline_loads_as_remote_code_without_the_package(calibrated, tmp_path):
    """`matcher.save_pretrained(folder)` writes `custom_pipelines` and the code; `pipeline(..., trust_remote_code=True)`
    loads it in a process where `transformers_seps` cannot be imported, and scores as the package does."""
    model, processor, _ = calibrated
    folder = tmp_path / "matcher"
    pipeline("image-text-matching", model=model, processor=processor).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["image-text-matching"]["impl"] == "pipelines.SepsImageTextMatchingPipeline"
    assert {"pipelines.py", "retrieval.py", "processor_config.json"} <= {path.name for path in folder.iterdir()}
    image = random_images(1, seed=10)[0]
    image.save(tmp_path / "image.png")
    expected = score_pairs(model, processor, image, LABELS)[0]

    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["transformers_seps"] = None  # the remote code must not need the package
        from PIL import Image
        from transformers import pipeline

        matcher = pipeline("image-text-matching", model={str(folder)!r}, trust_remote_code=True)
        assert type(matcher).__module__.startswith("transformers_modules"), type(matcher).__module__
        result = matcher(Image.open({str(tmp_path / "image.png")!r}), text={LABELS!r})
        print(json.dumps(result))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = [entry["score"] for entry in json.loads(result.stdout.splitlines()[-1])]
    torch.testing.assert_close(torch.tensor(scores), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "imports",
    [
        "from transformers import pipeline\nimport transformers_seps.pipelines",
        "import transformers_seps\nfrom transformers import pipeline",
    ],
    ids=["transformers-first", "package-first"],
)
def test_both_pipelines_load_a_folder_whatever_was_imported_first(calibrated, imports, tmp_path):
    """Issue 24: with Transformers imported before this package, a saved folder asked for trust_remote_code=True."""
    _, _, folder = calibrated
    script = f"""{imports}
from PIL import Image
image = Image.new("RGB", (40, 40))
print(pipeline("zero-shot-image-classification", model={str(folder)!r})(image, candidate_labels=["a", "b"]))
print(pipeline("image-text-matching", model={str(folder)!r})(image, text=["a red heart"]))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "hf_home" / "modules").exists()  # no remote code was loaded


def test_the_processor_loads_with_the_pipeline_folder(calibrated):
    """A pipeline built from a model folder finds the folder's SepsProcessor (`_load_processor`)."""
    _, _, folder = calibrated
    matcher = pipeline("image-text-matching", model=str(folder))
    assert isinstance(matcher.processor, SepsProcessor)
    assert matcher.model.config.logit_scale == 40.0


@pytest.mark.slow
def test_the_zero_shot_benchmark_runs_on_a_tiny_model(calibrated, tiny_synthetic):
    """benchmarks/zero_shot_softmax.py at toy size: one row per scale, the same top-1 accuracy (a scale does not
    change the ranking), probabilities in (0, 1)."""
    _, _, folder = calibrated
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "zero_shot_softmax.py"
    command = [sys.executable, str(script), "--model", str(folder), "--data_root", str(tiny_synthetic)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [
        line.strip("|").split("|") for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert [row[0].strip() for row in rows[1:]] == ["1.0 (raw S)", "40.00 (fit on dev)"]
    (_, raw_probability, raw_accuracy), (_, probability, accuracy) = rows[1:]
    assert raw_accuracy == accuracy
    assert 0 < float(raw_probability) < 1 and 0 < float(probability) < 1
