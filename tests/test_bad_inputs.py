"""Bad inputs to the Python API get a clear error naming the argument and the problem (issue 12).

`BAD_INPUTS` is a table: each row calls one public entry point (config, processor, model, retriever, metrics,
visualization) with one mistake a user makes, and gives the error type and a pattern of its message. The positive
tests below check what is accepted instead of refused: one caption as a `str`, float images in [0, 1], `top_k`
beyond the shortlist or the gallery.
"""

import copy
import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import EMBED_DIM, load_script, tiny_bert_config, tiny_config, tiny_model_with_processor
from PIL import Image, ImageOps
from transformers import BertModel, pipeline

from transformers_seps import SepsConfig, SepsModel, SepsProcessor, captioning
from transformers_seps.images import list_image_files, open_rgb_image, rgb_image
from transformers_seps.index import MANIFEST_FILE
from transformers_seps.inputs import check_pretrained_location
from transformers_seps.metrics import fold_metrics, mean_metrics, recall_metrics, retrieval_metrics
from transformers_seps.pipelines import load_pipeline_image
from transformers_seps.retrieval import SepsRetriever, score_pairs, shortlist_and_rerank
from transformers_seps.train.data import load_rgb_image
from transformers_seps.visualization import patch_selection, plot_patch_selection, plot_patch_word_alignment

IMAGE_SIZE = 40
TOKENS_PER_IMAGE = (IMAGE_SIZE // 8) ** 2 + 1  # the tiny ViT: 5 x 5 patches and [CLS]


@dataclass
class Context:
    model: SepsModel
    processor: SepsProcessor
    images: list[Image.Image]
    retriever: SepsRetriever  # a gallery of 3 images with dense captions
    saved: Path  # model and processor saved together
    without_tokenizer: Path  # the same, tokenizer files removed
    truncated_weights: Path  # the same, model.safetensors cut in half
    bert: Path  # a BertModel saved with save_pretrained: another model type
    index: Path  # the retriever's gallery saved as an index
    older_index: Path  # the same, its manifest marked as written by an earlier release (version 2)


def random_image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Context:
    model, processor = tiny_model_with_processor("paper")
    images = [random_image(seed) for seed in range(3)]
    retriever = SepsRetriever(model, processor)
    retriever.add_images(images, ["a red square", "a blue circle", "a green line"])
    root = tmp_path_factory.mktemp("bad_inputs")
    saved = root / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    without_tokenizer = root / "without_tokenizer"
    processor.save_pretrained(without_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (without_tokenizer / name).unlink(missing_ok=True)
    truncated_weights = root / "truncated_weights"
    model.save_pretrained(truncated_weights)
    weights = truncated_weights / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bert = root / "bert"
    BertModel(tiny_bert_config()).save_pretrained(bert)
    index, older_index = root / "index", root / "older_index"
    retriever.save(index)
    shutil.copytree(index, older_index)
    manifest = json.loads((older_index / MANIFEST_FILE).read_text())
    (older_index / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": 2}))
    return Context(
        model, processor, images, retriever, saved, without_tokenizer, truncated_weights, bert, index, older_index
    )


def with_config(model: SepsModel, **fields: Any) -> SepsModel:
    """A copy of `model` with some config fields changed (the same weights)."""
    changed = copy.deepcopy(model)
    for name, value in fields.items():
        setattr(changed.config, name, value)
    return changed


def embeds(num: int, length: int) -> torch.Tensor:
    return torch.randn(num, length, EMBED_DIM)


def similarity(ctx: Context, **overrides: Any) -> torch.Tensor:
    """`model.similarity` on 2 images and 3 captions, with some arguments replaced."""
    args = {"image_embeds": embeds(2, TOKENS_PER_IMAGE), "text_embeds": embeds(3, 4), "text_attention_mask": None}
    args.update(overrides)
    if args["text_attention_mask"] is None:
        args["text_attention_mask"] = torch.ones(args["text_embeds"].shape[:2])
    return ctx.model.similarity(**args)


def forward(ctx: Context, **overrides: Any) -> Any:
    """`model(...)` on 2 images and 2 captions, with some arguments replaced."""
    args = {"pixel_values": torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE), "input_ids": torch.tensor([[101, 2000, 102]] * 2)}
    args.update(overrides)
    return ctx.model(**args)


def zero_shot(ctx: Context) -> Any:
    return pipeline(
        "zero-shot-image-classification",
        model=ctx.model,
        tokenizer=ctx.processor.tokenizer,
        image_processor=ctx.processor.image_processor,
    )


def matcher(ctx: Context) -> Any:
    return pipeline("image-text-matching", model=ctx.model, processor=ctx.processor)


UNREACHABLE_URL = "http://127.0.0.1:9/photo.png"  # the discard port: refused at once, no network needed


def evaluate_metric(predictions: list[list[float]], references: list[int]) -> dict:
    evaluate = pytest.importorskip("evaluate")
    metric_folder = Path(__file__).resolve().parents[1] / "metrics" / "seps_retrieval"
    return evaluate.load(str(metric_folder)).compute(predictions=predictions, references=references)


uint8 = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)

# (id, call, error type, message pattern): each message names the argument or field and the problem.
BAD_INPUTS: list[tuple[str, Callable[[Context], Any], type[Exception], str]] = [
    # ------------------------------------------------------------------------------------------ SepsConfig
    (
        "config-ratio-str",
        lambda c: tiny_config(sparse_ratio="0.5"),
        ValueError,
        r"sparse_ratio must be in \(0, 1\], got '0.5' \(str\)",
    ),
    (
        "config-beta-str",
        lambda c: tiny_config(beta="0.2"),
        ValueError,
        r"beta must be in \[0, 0.5\].*got '0.2' \(str\)",
    ),
    ("config-tau-str", lambda c: tiny_config(gumbel_tau="1"), ValueError, r"gumbel_tau must be > 0, got '1' \(str\)"),
    (
        "config-int-bool",
        lambda c: tiny_config(embed_dim=True),
        ValueError,
        r"embed_dim must be an integer >= 1, got True \(bool\)",
    ),
    (
        "config-int-float",
        lambda c: tiny_config(similarity_chunk_size=2.5),
        ValueError,
        r"similarity_chunk_size must be an integer >= 1 or None, got 2.5 \(float\)",
    ),
    (
        "config-topk-str",
        lambda c: tiny_config(relevance_topk="5"),
        ValueError,
        r"relevance_topk must be an integer >= 1",
    ),
    ("config-margin-nan", lambda c: tiny_config(margin=math.nan), ValueError, r"margin must be >= 0, got nan"),
    (
        "config-bool-str",
        lambda c: tiny_config(keep_cls_and_extra_token="no"),
        ValueError,
        r"keep_cls_and_extra_token must be True or False, got 'no' \(str\)",
    ),
    (
        "config-optional-zero",
        lambda c: tiny_config(vision_hidden_size=0),
        ValueError,
        r"vision_hidden_size must be an integer >= 1 or None, got 0",
    ),
    (
        "config-cls-str",
        lambda c: tiny_config(vision_cls_token="yes"),
        ValueError,
        r"vision_cls_token must be True, False or None, got 'yes'",
    ),
    # ------------------------------------------------------------------------------------------ SepsProcessor
    (
        "processor-missing-folder",
        lambda c: SepsProcessor.from_pretrained("runs/no_such_run/best"),
        FileNotFoundError,
        r"no such folder: 'runs/no_such_run/best' \(and it is not a Hub id",
    ),
    (
        "processor-missing-dot-folder",
        lambda c: SepsProcessor.from_pretrained("./no_such_model"),
        FileNotFoundError,
        r"no such folder: './no_such_model'",
    ),
    (
        "processor-file",
        lambda c: SepsProcessor.from_pretrained(c.saved / "config.json"),
        NotADirectoryError,
        r"config.json' is a file; from_pretrained takes the folder",
    ),
    (
        "processor-no-tokenizer",
        lambda c: SepsProcessor.from_pretrained(c.without_tokenizer),
        FileNotFoundError,
        r"without_tokenizer' holds no tokenizer file \(needs tokenizer.json or vocab.txt; it has \[.*'processor_config",
    ),
    ("processor-images-empty", lambda c: c.processor(images=[]), ValueError, r"`images` is an empty list"),
    (
        "processor-images-none-item",
        lambda c: c.processor(images=[c.images[0], None]),
        ValueError,
        r"`images` must be a PIL image.*got list whose item 1 is a NoneType",
    ),
    (
        "processor-images-normalized",
        lambda c: c.processor(images=np.full((40, 40, 3), -1.5, np.float32)),
        ValueError,
        r"`images\[0\]` is a float image with values in \[-1.5, -1.5\], outside \[0, 1\] and \[0, 255\]",
    ),
    (
        "processor-images-nan",
        lambda c: c.processor(images=torch.full((3, 40, 40), math.nan)),
        ValueError,
        r"`images\[0\]` is a float image with values in \[nan, nan\]",
    ),
    (
        "processor-images-mixed",
        lambda c: c.processor(images=[uint8, uint8.astype(np.float32) / 255]),
        ValueError,
        r"`images` mixes float images with values in \[0, 1\] \(images \[1\]\) with images in \[0, 255\]",
    ),
    (
        "processor-image-float-range",
        lambda c: c.processor(images=Image.fromarray(np.full((40, 40), 300.5, np.float32))),
        ValueError,
        r"`images\[0\]`: a PIL image of mode 'F' with values in \[300.5, 300.5\], outside \[0, 1\] or \[0, 255\]",
    ),
    (
        "processor-image-int-range",
        lambda c: c.processor(images=[c.images[0], Image.fromarray(np.full((40, 40), -3, np.int32))]),
        ValueError,
        r"`images\[1\]`: a PIL image of mode 'I' with values in \[-3, -3\], outside \[0, 255\] \(8 bits\) or "
        r"\[0, 65535\] \(16 bits\)",
    ),
    (
        "processor-image-mode",
        lambda c: c.processor(images=Image.new("La", (40, 40))),
        ValueError,
        r"`images\[0\]`: a PIL image of mode 'La' cannot be converted to RGB",
    ),
    ("processor-text-empty", lambda c: c.processor(text=[]), ValueError, r"`text` is an empty list"),
    (
        "processor-text-number",
        lambda c: c.processor(text=["a dog", 3]),
        ValueError,
        r"`text\[1\]` must be a string, got int",
    ),
    (
        "processor-dense-blank",
        lambda c: c.processor(dense_text=["  "]),
        ValueError,
        r"`dense_text\[0\]` is an empty or whitespace-only string",
    ),
    (
        "processor-return-tensors",
        lambda c: c.processor(text="a dog", return_tensors="tf"),
        ValueError,
        r"`return_tensors` must be one of \('pt', 'np', None\), got 'tf'",
    ),
    (
        "processor-dense-count",
        lambda c: c.processor(images=c.images[:2], dense_text="one"),
        ValueError,
        r"`dense_text` must hold one dense caption per image: got 2 image\(s\) and 1",
    ),
    # ------------------------------------------------------------------------------------------ SepsModel
    (
        "model-missing-folder",
        lambda c: SepsModel.from_pretrained("runs/no_such_run/best"),
        FileNotFoundError,
        r"no such folder: 'runs/no_such_run/best'",
    ),
    (
        "model-missing-home-folder",
        lambda c: SepsModel.from_pretrained("~/no_such_model"),
        FileNotFoundError,
        r"no such folder: '~/no_such_model' .*'~' is not expanded",
    ),
    (
        "model-truncated-weights",
        lambda c: SepsModel.from_pretrained(c.truncated_weights),
        OSError,
        r"cannot read the weights file '.*truncated_weights/model.safetensors'.*damaged or incomplete",
    ),
    (
        "model-other-type",
        lambda c: SepsModel.from_pretrained(c.bert),
        ValueError,
        r"bert' holds a model of type 'bert' \(its config.json\), not a SEPS model \('seps'\); to build SEPS on it "
        r"as a backbone, use SepsModel.from_backbones",
    ),
    ("config-other-type", lambda c: SepsConfig.from_pretrained(c.bert), ValueError, r"a model of type 'bert'"),
    (
        "model-pixels-uint8",
        lambda c: c.model.get_image_features(torch.zeros(1, 3, 40, 40, dtype=torch.uint8)),
        ValueError,
        r"pixel_values must be a float tensor of normalized pixels .* got dtype torch.uint8",
    ),
    (
        "model-pixels-3d",
        lambda c: c.model.get_image_features(torch.zeros(3, 40, 40)),
        ValueError,
        r"pixel_values must be a \(batch, channels, height, width\) tensor, got \(3, 40, 40\)",
    ),
    (
        "model-pixels-channels",
        lambda c: c.model.get_image_features(torch.zeros(1, 1, 40, 40)),
        ValueError,
        r"pixel_values has 1 channels; the vision backbone expects 3",
    ),
    (
        "model-pixels-empty",
        lambda c: c.model.get_image_features(torch.zeros(0, 3, 40, 40)),
        ValueError,
        r"pixel_values holds no image",
    ),
    (
        "model-ids-float",
        lambda c: c.model.get_text_features(torch.tensor([[101.0, 102.0]])),
        ValueError,
        r"input_ids must hold integer token ids \(int64\), got dtype torch.float32",
    ),
    (
        "model-ids-vocab",
        lambda c: c.model.get_text_features(torch.tensor([[101, 99999, 102]])),
        ValueError,
        r"input_ids holds token ids in \[101, 99999\], outside the text model's vocabulary \[0, 30522\)",
    ),
    (
        "model-ids-list",
        lambda c: c.model.get_text_features([[101, 102]]),
        ValueError,
        r"input_ids must be a \(batch, sequence\) tensor of token ids, got <class 'list'>",
    ),
    (
        "model-mask-empty-row",
        lambda c: c.model.get_text_features(torch.tensor([[101, 102]] * 2), torch.tensor([[1, 1], [0, 0]])),
        ValueError,
        r"attention_mask: rows \[1\] have no token",
    ),
    (
        "model-mask-shape",
        lambda c: c.model.get_text_features(torch.tensor([[101, 102]]), torch.ones(1, 3)),
        ValueError,
        r"attention_mask \(1, 3\) must have the shape of input_ids \(1, 2\)",
    ),
    (
        "model-similarity-no-image",
        lambda c: similarity(c, image_embeds=embeds(0, TOKENS_PER_IMAGE)),
        ValueError,
        r"image_embeds is empty \(shape \(0, 26, 24\)\)",
    ),
    (
        "model-similarity-no-text",
        lambda c: similarity(c, text_embeds=embeds(0, 4)),
        ValueError,
        r"text_embeds is empty \(shape \(0, 4, 24\)\)",
    ),
    (
        "model-similarity-numpy",
        lambda c: similarity(c, image_embeds=np.zeros((2, TOKENS_PER_IMAGE, EMBED_DIM))),
        ValueError,
        r"image_embeds must be a torch.Tensor, got ndarray",
    ),
    (
        "model-similarity-chunk-zero",
        lambda c: similarity(c, chunk_size=0),
        ValueError,
        r"chunk_size must be an integer >= 1, got 0",
    ),
    (
        "model-forward-unpaired-loss",
        lambda c: forward(c, input_ids=torch.tensor([[101, 102]] * 3), return_loss=True),
        ValueError,
        r"return_loss needs paired batches .* got 2 images and 3 captions",
    ),
    (
        "model-forward-image-ids",
        lambda c: forward(c, image_ids=torch.tensor([0, 1, 2])),
        ValueError,
        r"image_ids must be a tensor of shape \(2,\), one id per image; got \(3,\)",
    ),
    (
        "model-forward-dense-ids",
        lambda c: forward(c, dense_input_ids=torch.tensor([[101.0, 102.0]] * 2)),
        ValueError,
        r"dense_input_ids must hold integer token ids",
    ),
    # ------------------------------------------------------------------------------------------ retrieval
    (
        "retriever-shortlist-str",
        lambda c: SepsRetriever(c.model, c.processor, shortlist_size="2"),
        ValueError,
        r"shortlist_size must be an integer >= 1, got '2'",
    ),
    (
        "retriever-batch-zero",
        lambda c: SepsRetriever(c.model, c.processor, batch_size=0),
        ValueError,
        r"batch_size must be an integer >= 1, got 0",
    ),
    (
        "retriever-empty-gallery",
        lambda c: SepsRetriever(c.model, c.processor).search("a dog"),
        ValueError,
        r"the gallery is empty: call add_images first",
    ),
    (
        "retriever-add-no-image",
        lambda c: SepsRetriever(c.model, c.processor).add_images([]),
        ValueError,
        r"`images` is an empty list",
    ),
    (
        "retriever-dense-count",
        lambda c: SepsRetriever(c.model, c.processor).add_images(c.images, ["a", "b"]),
        ValueError,
        r"dense_captions must hold one dense caption per image: got 3 images and 2 dense captions",
    ),
    (
        "retriever-top-k-zero",
        lambda c: c.retriever.search("a dog", top_k=0),
        ValueError,
        r"top_k must be an integer >= 1, got 0",
    ),
    ("retriever-no-query", lambda c: c.retriever.search([]), ValueError, r"`text` is an empty list"),
    (
        "retriever-image-batch",
        lambda c: c.retriever.search_image(c.images[:2], ["a dog"]),
        ValueError,
        r"`image` must be one image, got a batch of 2",
    ),
    (
        "retriever-dense-list",
        lambda c: c.retriever.search_image(c.images[0], ["a dog"], dense_caption=["x"]),
        ValueError,
        r"`dense_caption` must be one caption \(a str\), got list",
    ),
    (
        "score-pairs-no-text",
        lambda c: score_pairs(c.model, c.processor, c.images, []),
        ValueError,
        r"`texts` is an empty list",
    ),
    (
        "shortlist-zero",
        lambda c: shortlist_and_rerank(c.model, embeds(3, TOKENS_PER_IMAGE), embeds(1, 4), torch.ones(1, 4), 0),
        ValueError,
        r"shortlist_size must be an integer >= 1, got 0",
    ),
    (
        "index-older-version",
        lambda c: SepsRetriever.load(c.older_index, c.model),
        ValueError,
        r"older_index/manifest.json: index version 2, written by an earlier release of transformers-seps; this code "
        r"reads version 3: build the index again",
    ),
    (
        "index-other-config",
        lambda c: SepsRetriever.load(c.index, with_config(c.model, sparse_ratio=0.75, relevance_topk=3)),
        ValueError,
        r"index was encoded by another model: config fields differ: relevance_topk 5 in the index, 3 in the model; "
        r"sparse_ratio 0.5 in the index, 0.75 in the model$",
    ),
    (
        "index-other-weights",
        lambda c: SepsRetriever.load(c.index, tiny_model_with_processor("paper", seed=1)[0]),
        ValueError,
        r"index was encoded by another model: the weights differ \(the config fields that shape vectors and scores",
    ),
    # ------------------------------------------------------------------------------------------ pipelines
    (
        "zero-shot-no-label",
        lambda c: zero_shot(c)(c.images[0], candidate_labels=[]),
        ValueError,
        r"`candidate_labels` is an empty list",
    ),
    (
        "zero-shot-unreachable-url",
        lambda c: zero_shot(c)(UNREACHABLE_URL, candidate_labels=["a dog"]),
        OSError,
        r"cannot fetch the image http://127.0.0.1:9/photo.png \(ConnectError: ",
    ),
    (
        "matching-unreachable-url",
        lambda c: matcher(c)(UNREACHABLE_URL, text="a dog"),
        OSError,
        r"cannot fetch the image http://127.0.0.1:9/photo.png \(ConnectError: ",
    ),
    # ------------------------------------------------------------------------------------------ metrics
    (
        "metrics-empty",
        lambda c: retrieval_metrics(np.zeros((0, 0)), []),
        ValueError,
        r"similarity is empty \(shape \(0, 0\)\)",
    ),
    (
        "metrics-float-targets",
        lambda c: retrieval_metrics(np.eye(2), [0.2, 1.7]),
        ValueError,
        r"caption_to_image must hold integer image indices, got dtype float64",
    ),
    (
        "metrics-strings",
        lambda c: retrieval_metrics([["high", "low"]], [0]),
        ValueError,
        r"similarity must be a matrix of numbers, got list",
    ),
    (
        "metrics-nan",
        lambda c: retrieval_metrics(np.array([[math.nan]]), [0]),
        ValueError,
        r"similarity holds NaN or infinite values, e.g. at \[\[0, 0\]\]",
    ),
    (
        "metrics-targets-range",
        lambda c: retrieval_metrics(np.eye(2), [0, 5]),
        ValueError,
        r"caption_to_image must index the 2 images; got values in \[0, 5\]",
    ),
    ("metrics-no-ranks", lambda c: recall_metrics(np.array([]), np.array([1])), ValueError, r"i2t_ranks is empty"),
    ("metrics-mean-of-none", lambda c: mean_metrics([]), ValueError, r"mean_metrics needs at least one metrics dict"),
    (
        "metrics-folds-1d",
        lambda c: fold_metrics(np.zeros(5000), np.repeat(np.arange(1000), 5)),
        ValueError,
        r"similarity must be a \(N_img, N_txt\) matrix, got shape \(5000,\)",
    ),
    (
        "evaluate-ragged",
        lambda c: evaluate_metric([[0.9, 0.1], [0.2]], [0, 1]),
        ValueError,
        r"predictions must hold one score per gallery image in every row; rows have 1 to 2 scores",
    ),
    ("evaluate-empty", lambda c: evaluate_metric([], []), ValueError, r"similarity is empty"),
    # ------------------------------------------------------------------------------------------ visualization
    (
        "plot-captions-list",
        lambda c: plot_patch_selection(c.model, c.processor, c.images[0], ["a", "b"]),
        ValueError,
        r"`text` must be one caption \(a str\), got list",
    ),
    (
        "plot-image-batch",
        lambda c: patch_selection(c.model, c.processor, c.images[:2], "a dog"),
        ValueError,
        r"`image` must be one image, got a batch of 2",
    ),
    (
        "plot-dense-list",
        lambda c: patch_selection(c.model, c.processor, c.images[0], "a dog", ["x"]),
        ValueError,
        r"`dense_text` must be one caption \(a str\), got list",
    ),
    (
        "plot-alpha-range",
        lambda c: plot_patch_selection(c.model, c.processor, c.images[0], "a dog", dropped_alpha=1.5),
        ValueError,
        r"dropped_alpha must be an opacity in \[0, 1\], got 1.5",
    ),
    (
        "plot-columns-zero",
        lambda c: plot_patch_word_alignment(c.model, c.processor, c.images[0], "a dog", columns=0),
        ValueError,
        r"columns must be an integer >= 1, got 0",
    ),
    (
        "plot-alpha-str",
        lambda c: plot_patch_word_alignment(c.model, c.processor, c.images[0], "a dog", alpha="0.5"),
        ValueError,
        r"alpha must be an opacity in \[0, 1\], got '0.5'",
    ),
]


def _table_params() -> list:
    """The table's rows as test parameters; loading the `evaluate` module (its import) takes over 10 s: slow."""
    marks = {row_id: pytest.mark.slow for row_id, *_ in BAD_INPUTS if row_id.startswith("evaluate-")}
    return [pytest.param(*row[1:], id=row[0], marks=marks.get(row[0], ())) for row in BAD_INPUTS]


@pytest.mark.parametrize(("call", "error", "pattern"), _table_params())
def test_bad_input_gets_a_clear_error(ctx, call, error, pattern):
    with pytest.raises(error) as raised:
        call(ctx)
    assert type(raised.value) is error, f"{type(raised.value).__name__}: {raised.value}"
    assert re.search(pattern, str(raised.value)), str(raised.value)


def test_the_table_covers_every_entry_point():
    areas = {row[0].split("-")[0] for row in BAD_INPUTS}
    assert {"config", "processor", "model", "retriever", "metrics", "plot"} <= areas
    assert len(BAD_INPUTS) >= 30
    assert len({row[0] for row in BAD_INPUTS}) == len(BAD_INPUTS)


def test_forward_checks_every_input_before_the_encoders_run(ctx, monkeypatch):
    def encoder_must_not_run(*args, **kwargs):
        raise AssertionError("an encoder ran before the inputs were checked")

    monkeypatch.setattr(ctx.model.vision_model, "forward", encoder_must_not_run)
    monkeypatch.setattr(ctx.model.text_model, "forward", encoder_must_not_run)
    for bad in (
        {"input_ids": torch.tensor([[101, 99999]] * 2)},
        {"dense_input_ids": torch.tensor([[101, 102]] * 3)},
        {"image_ids": torch.tensor([0])},
        {"input_ids": torch.tensor([[101, 102]] * 3), "return_loss": True},
    ):
        with pytest.raises(ValueError):
            forward(ctx, **bad)


# ---------------------------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "torch"])
def test_float_images_in_zero_one_give_the_pixels_of_the_uint8_image(ctx, as_tensor):
    scaled = uint8.astype(np.float32) / 255
    if as_tensor:
        scaled = torch.from_numpy(scaled).permute(2, 0, 1)  # channels first, as torchvision's ToTensor gives
    expected = ctx.processor(images=uint8)["pixel_values"]
    assert torch.equal(ctx.processor(images=scaled)["pixel_values"], expected)
    assert torch.equal(ctx.processor(images=[scaled, scaled])["pixel_values"], torch.cat([expected, expected]))
    # the score of the pair is the uint8 image's too
    uint8_score = score_pairs(ctx.model, ctx.processor, uint8, "a dog")
    assert torch.equal(score_pairs(ctx.model, ctx.processor, scaled, "a dog"), uint8_score)
    # Transformers' behaviour stays available on request: rescaled again, a near-black image
    darkened = ctx.processor(images=scaled, do_rescale=True)["pixel_values"]
    assert not torch.allclose(darkened, expected, atol=0.1)


def test_uint8_pil_and_float_0_255_images_are_unchanged(ctx):
    expected = ctx.processor(images=uint8, do_rescale=True)["pixel_values"]  # the image processor as configured
    assert torch.equal(ctx.processor(images=uint8)["pixel_values"], expected)
    assert torch.equal(ctx.processor(images=Image.fromarray(uint8))["pixel_values"], expected)
    assert torch.equal(ctx.processor(images=uint8.astype(np.float32))["pixel_values"], expected)


def test_one_caption_as_a_str_is_a_list_of_one(ctx):
    as_list = ctx.processor(text=["a dog"], dense_text=["a dog on grass"])
    as_str = ctx.processor(text="a dog", dense_text="a dog on grass")
    assert all(torch.equal(as_list[key], as_str[key]) for key in as_list)
    result = ctx.retriever.search_image(ctx.images[0], "dog", top_k=5)  # not 'd', 'o', 'g'
    assert result.indices.shape == (1, 1)
    listed = ctx.retriever.search_image(ctx.images[0], ["dog"], top_k=5)
    assert torch.equal(result.scores, listed.scores)
    gallery = SepsRetriever(ctx.model, ctx.processor)
    gallery.add_images(ctx.images[0], "a red square")  # one image with its dense caption
    assert len(gallery) == 1
    assert gallery.search("a dog").indices.tolist() == [[0]]


def test_top_k_beyond_the_shortlist_or_the_gallery(ctx):
    exhaustive = ctx.retriever.search(["a dog", "a red square"], top_k=3)
    shortlisted = SepsRetriever(ctx.model, ctx.processor, shortlist_size=2)
    shortlisted.add_images(ctx.images, ["a red square", "a blue circle", "a green line"])
    # top_k=3 > shortlist_size=2: the shortlist grows to 3 images, here the whole gallery
    result = shortlisted.search(["a dog", "a red square"], top_k=3)
    assert torch.equal(result.indices, exhaustive.indices)
    torch.testing.assert_close(result.scores, exhaustive.scores)
    # top_k beyond the gallery: the whole gallery, ranked
    assert ctx.retriever.search("a dog", top_k=10).indices.shape == (1, 3)
    # a shortlist larger than the gallery is the gallery
    image_embeds = embeds(3, TOKENS_PER_IMAGE)
    reranked = shortlist_and_rerank(ctx.model, image_embeds, embeds(1, 4), torch.ones(1, 4), shortlist_size=10)
    assert sorted(reranked.indices[0].tolist()) == [0, 1, 2]


def test_hub_ids_still_go_to_the_hub_and_folders_are_found(ctx):
    for hub_id in ("bert-base-uncased", "org/seps-vit-f30k"):
        assert check_pretrained_location(hub_id) is None
    assert check_pretrained_location(ctx.saved) == str(ctx.saved)
    with pytest.raises(FileNotFoundError, match="no such folder: .*subfolder 'weights'"):
        check_pretrained_location(ctx.saved, "weights")
    assert isinstance(SepsModel.from_pretrained(ctx.saved), SepsModel)


def test_config_takes_numpy_numbers_and_stores_python_ones():
    config = tiny_config(embed_dim=np.int64(EMBED_DIM), beta=np.float32(0.25), relevance_topk=np.int32(3))
    assert (type(config.embed_dim), type(config.relevance_topk), type(config.beta)) == (int, int, float)
    assert SepsConfig.from_dict(json.loads(config.to_json_string())).relevance_topk == 3  # NumPy's would not serialize


# ------------------------------------------------------------------------------------------ images of any mode

# A 16-bit grey ramp over the whole range, and the 8-bit grey it stands for.
RAMP_16 = (np.arange(IMAGE_SIZE * IMAGE_SIZE, dtype=np.float64).reshape(IMAGE_SIZE, IMAGE_SIZE) * 65535 / 1599).round()
RAMP_8 = np.rint(RAMP_16 * 255 / 65535).astype(np.uint8)
COLOURS = np.random.default_rng(1).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 4), dtype=np.uint8)


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


# (id, image, the RGB pixels the model must see)
IMAGE_MODES = [
    ("16-bit grey I;16", Image.fromarray(RAMP_16.astype(np.uint16)), grey_rgb(RAMP_8)),
    ("16-bit grey I;16B", Image.fromarray(RAMP_16.astype(">u2")), grey_rgb(RAMP_8)),
    ("32-bit I, 16-bit values", Image.fromarray(RAMP_16.astype(np.int32)), grey_rgb(RAMP_8)),
    ("32-bit I, 8-bit values", Image.fromarray(RAMP_8.astype(np.int32)), grey_rgb(RAMP_8)),
    ("float F in [0, 1]", Image.fromarray((RAMP_8 / 255).astype(np.float32)), grey_rgb(RAMP_8)),
    ("float F in [0, 255]", Image.fromarray(RAMP_8.astype(np.float32)), grey_rgb(RAMP_8)),
    ("RGBA: alpha dropped", Image.fromarray(COLOURS, "RGBA"), COLOURS[..., :3]),
    ("LA", Image.fromarray(COLOURS[..., :2], "LA"), grey_rgb(COLOURS[..., 0])),
    ("grey L", Image.fromarray(RAMP_8), grey_rgb(RAMP_8)),
    ("palette P", Image.fromarray(COLOURS[..., :3]).quantize(16), None),  # convert("RGB") of it
    ("CMYK", Image.fromarray(COLOURS, "CMYK"), None),
]


@pytest.mark.parametrize(("image", "expected"), [pytest.param(*row[1:], id=row[0]) for row in IMAGE_MODES])
def test_images_of_every_mode_become_the_8_bit_rgb_they_show(ctx, image, expected):
    if expected is None:
        expected = np.asarray(image.convert("RGB"))
    converted = rgb_image(image)
    assert converted.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(converted), expected)
    pixels = ctx.processor(images=image)["pixel_values"]  # the processor sees the same image
    assert torch.equal(pixels, ctx.processor(images=Image.fromarray(expected))["pixel_values"])


@pytest.fixture
def sixteen_bit_png(tmp_path) -> Path:
    path = tmp_path / "ramp16.png"
    Image.fromarray(RAMP_16.astype(np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"  # what PIL reads a 16-bit PNG as
    return path


def test_a_16_bit_png_is_scaled_not_white_wherever_it_is_decoded(ctx, sixteen_bit_png):
    """Issue 24: `convert("RGB")` clipped 16-bit values at 255, a 99.6% white image. The processor, the data
    loaders (and the index build, which uses them), the dense-caption writer and the demo page decode alike."""
    expected = grey_rgb(RAMP_8)
    np.testing.assert_array_equal(np.asarray(open_rgb_image(sixteen_bit_png)), expected)
    np.testing.assert_array_equal(np.asarray(load_rgb_image(sixteen_bit_png)), expected)
    np.testing.assert_array_equal(np.asarray(load_pipeline_image(str(sixteen_bit_png))), expected)  # the pipelines
    with Image.open(sixteen_bit_png) as opened:
        pixels = ctx.processor(images=opened)["pixel_values"]
    assert torch.equal(pixels, ctx.processor(images=Image.fromarray(expected))["pixel_values"])

    class RecordingCaptioner:
        model_id = "recording"

        def __init__(self) -> None:
            self.seen: list[Image.Image] = []

        def caption_batch(self, images: list[Image.Image]) -> list[str]:
            self.seen.extend(images)
            return ["a caption"] * len(images)

    captioner = RecordingCaptioner()
    records = captioning._caption_files(captioner, [("ramp16.png", sixteen_bit_png)])
    assert records[0]["text"] == "a caption"
    np.testing.assert_array_equal(np.asarray(captioner.seen[0]), expected)

    demo = load_script(Path(__file__).resolve().parents[1] / "demo" / "app.py", "seps_demo_app_images")
    names, images = demo.load_gallery(sixteen_bit_png.parent, "*.png", 10)
    assert names == ["ramp16.png"]
    np.testing.assert_array_equal(np.asarray(images[0]), expected)


def test_an_exif_rotated_jpeg_is_turned_upright(ctx, tmp_path):
    wide = Image.fromarray(COLOURS[:20, :, :3])  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # shot rotated: viewers turn it 90 degrees clockwise
    wide.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "rotated.jpg") as opened:
        upright = ImageOps.exif_transpose(opened)
        assert upright.size == (20, 40)
        np.testing.assert_array_equal(np.asarray(open_rgb_image(tmp_path / "rotated.jpg")), np.asarray(upright))
        assert torch.equal(ctx.processor(images=opened)["pixel_values"], ctx.processor(images=upright)["pixel_values"])


def test_files_that_are_not_images_are_counted_and_named(tmp_path, caplog):
    for name in ("b.png", "a.jpg", "notes.txt", ".DS_Store", "sub/c.JPEG", "sub/captions.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files = list_image_files(tmp_path)
    assert [path.relative_to(tmp_path).as_posix() for path in files.images] == ["a.jpg", "b.png", "sub/c.JPEG"]
    message = (
        f"skipped 3 files of {tmp_path} that are not images (by the extension): .DS_Store, notes.txt, sub/captions.csv"
    )
    assert files.skipped_message() == message
    with caplog.at_level("WARNING"):
        assert list(captioning.list_images(tmp_path)) == ["a.jpg", "b.png", "sub/c.JPEG"]  # the index build's list
    assert message in caplog.text
