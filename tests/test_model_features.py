"""The standard Transformers features of `SepsModel` (issue 17): `ModelOutput` features, backbone hidden states
and attentions, `token_type_ids`, attention implementations, gradient checkpointing, input embeddings."""

import inspect

import pytest
import torch
from conftest import EMBED_DIM, VOCAB_SIZE, random_captions, tiny_bert_config, tiny_model
from transformers import BertModel
from transformers.modeling_layers import GradientCheckpointingLayer

from transformers_seps import SepsFeaturesOutput, SepsModel
from transformers_seps.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel

PIXELS = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))


def test_main_input_name_is_the_first_argument_of_forward():
    parameters = list(inspect.signature(SepsModel.forward).parameters)
    assert SepsModel.main_input_name == parameters[1] == "pixel_values"  # [0] is self


def test_get_features_wrap_the_bare_tensors_with_pooled_vectors(variant):
    model = tiny_model(variant)
    ids, mask = random_captions(4, 8, seed=1)
    with torch.no_grad():
        image = model.get_image_features(PIXELS)
        text = model.get_text_features(ids, mask)
        image_tokens, text_tokens = model.encode_image(PIXELS), model.encode_text(ids, mask)
    assert isinstance(image, SepsFeaturesOutput) and isinstance(text, SepsFeaturesOutput)
    torch.testing.assert_close(image.embeds, image_tokens)
    torch.testing.assert_close(text.embeds, text_tokens)
    # last_hidden_state: the backbones' own (width 32), as CLIP's; the projected tokens are `embeds` (width C).
    assert image.last_hidden_state.shape == (3, 26, 32) and text.last_hidden_state.shape == (4, 8, 32)
    # pooled: the global embeddings, the first stage of a two-stage search (unit vectors).
    torch.testing.assert_close(image.pooler_output, model.global_image_embeds(image_tokens))
    torch.testing.assert_close(text.pooler_output, model.global_text_embeds(text_tokens, mask))
    assert text.pooler_output.shape == (4, EMBED_DIM)
    torch.testing.assert_close(text.pooler_output.norm(dim=-1), torch.ones(4))


def test_return_dict_false_gives_tuples(variant):
    model = tiny_model(variant)
    ids, mask = random_captions(3, 6, seed=2)
    with torch.no_grad():
        as_dict = model(PIXELS, ids, mask, return_loss=True)
        as_tuple = model(PIXELS, ids, mask, return_loss=True, return_dict=False)
        model.config.return_dict = False
        features = model.get_text_features(ids, mask)
    assert isinstance(as_tuple, tuple) and isinstance(features, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    # The backbones' outputs come last, as nested tuples.
    torch.testing.assert_close(as_tuple[-2][0], as_dict.vision_model_output.last_hidden_state)
    torch.testing.assert_close(as_tuple[-1][-1], as_dict.text_model_output.embeds)


def test_forward_returns_the_backbones_hidden_states_and_attentions(variant):
    model = tiny_model(variant)
    model.set_attn_implementation("eager")
    ids, mask = random_captions(3, 6, seed=3)
    with torch.no_grad():
        out = model(PIXELS, ids, mask, output_hidden_states=True, output_attentions=True)
        vision = model.vision_model(pixel_values=PIXELS, output_hidden_states=True, output_attentions=True)
        text = model.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        plain = model(PIXELS, ids, mask)
    for got, expected in ((out.vision_model_output, vision), (out.text_model_output, text)):
        assert len(got.hidden_states) == 2 and len(got.attentions) == 1  # embeddings + 1 layer; 1 layer
        for name in ("hidden_states", "attentions"):
            for mine, theirs in zip(getattr(got, name), getattr(expected, name), strict=True):
                torch.testing.assert_close(mine, theirs)
    assert plain.vision_model_output.hidden_states is None and plain.text_model_output.attentions is None
    torch.testing.assert_close(out.logits_per_image, plain.logits_per_image)


def test_token_type_ids_reach_the_text_backbone():
    model = tiny_model()
    ids, mask = random_captions(3, 6, seed=4)
    segments = torch.zeros_like(ids)
    segments[:, 3:] = 1
    with torch.no_grad():
        default = model(PIXELS, ids, mask).logits_per_image
        zeros = model(PIXELS, ids, mask, token_type_ids=torch.zeros_like(ids)).logits_per_image
        second = model(PIXELS, ids, mask, token_type_ids=segments).logits_per_image
        tokens = model.encode_text(ids, mask, token_type_ids=segments)
        expected = model.text_projection(
            model.text_model(input_ids=ids, attention_mask=mask, token_type_ids=segments)[0]
        )
    torch.testing.assert_close(zeros, default)
    assert not torch.allclose(second, default)
    torch.testing.assert_close(tokens, expected)


def test_token_type_ids_of_the_wrong_shape_are_refused_before_the_encoders(monkeypatch):
    model = tiny_model()
    ids, mask = random_captions(3, 6, seed=4)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the vision backbone ran before the inputs were checked")

    monkeypatch.setattr(model.vision_model, "forward", no_encoder)
    with pytest.raises(ValueError, match=r"token_type_ids \(3, 5\) must have the shape of input_ids \(3, 6\)"):
        model(PIXELS, ids, mask, token_type_ids=torch.zeros(3, 5, dtype=torch.long))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_implementation_reaches_both_backbones(tmp_path, implementation):
    tiny_model().save_pretrained(tmp_path)
    loaded = SepsModel.from_pretrained(tmp_path, attn_implementation=implementation)
    assert loaded.vision_model.config._attn_implementation == implementation
    assert loaded.text_model.config._attn_implementation == implementation
    other = "sdpa" if implementation == "eager" else "eager"
    loaded.set_attn_implementation(other)
    assert loaded.vision_model.config._attn_implementation == loaded.text_model.config._attn_implementation == other


def test_a_cnn_backbone_takes_the_attention_and_checkpointing_settings(tmp_path):
    """EfficientNet-Lite has no attention and no checkpointed layers: the settings change nothing for it."""
    vision = EfficientNetLiteModel(EfficientNetLiteConfig(num_stages=3, image_size=32))
    model = SepsModel.from_backbones(vision, BertModel(tiny_bert_config()), embed_dim=EMBED_DIM)
    model.save_pretrained(tmp_path)
    loaded = SepsModel.from_pretrained(tmp_path, attn_implementation="eager")
    loaded.activation_checkpointing_enable()
    ids, mask = random_captions(2, 5, seed=5)
    loaded.train()(torch.randn(2, 3, 32, 32), ids, mask, return_loss=True).loss.backward()
    assert loaded.text_model.config._attn_implementation == "eager"
    assert all(p.grad is not None for p in loaded.vision_model.parameters() if p.requires_grad)


def _loss_and_gradients(model: SepsModel, checkpointing: bool) -> tuple[torch.Tensor, dict, int]:
    """One training step's loss and gradients, and how often the vision backbone's first layer ran."""
    if checkpointing:
        model.activation_checkpointing_enable()
    else:
        model.activation_checkpointing_disable()
    model.zero_grad()
    calls = []
    layer = next(module for module in model.vision_model.modules() if isinstance(module, GradientCheckpointingLayer))
    handle = next(layer.children()).register_forward_hook(lambda *args: calls.append(1))
    ids, mask = random_captions(3, 6, seed=6)
    dense_ids, dense_mask = random_captions(3, 9, seed=7)
    torch.manual_seed(0)  # the paper variant samples its selection in training
    loss = model(PIXELS, ids, mask, dense_ids, dense_mask, return_loss=True).loss
    loss.backward()
    handle.remove()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), gradients, len(calls)


def test_gradient_checkpointing_recomputes_the_backbones_with_equal_gradients(variant):
    model = tiny_model(variant).train()
    for module in model.modules():  # the backbones' dropout would differ between the two runs
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    loss, gradients, calls = _loss_and_gradients(model, checkpointing=False)
    checkpointed = [name for name, module in model.named_modules() if getattr(module, "gradient_checkpointing", False)]
    assert checkpointed == []
    loss_ckpt, gradients_ckpt, calls_ckpt = _loss_and_gradients(model, checkpointing=True)
    checkpointed = [name for name, module in model.named_modules() if getattr(module, "gradient_checkpointing", False)]
    assert any(name.startswith("vision_model.") for name in checkpointed)
    assert any(name.startswith("text_model.") for name in checkpointed)
    assert (calls, calls_ckpt) == (1, 2)  # the checkpointed layer runs again in the backward pass
    torch.testing.assert_close(loss_ckpt, loss)
    assert gradients_ckpt.keys() == gradients.keys() and any(n.startswith("vision_model.") for n in gradients)
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradients_ckpt[name], gradient, msg=name)


def test_input_embeddings_are_the_text_backbones_and_resize():
    model = tiny_model()
    assert model.get_input_embeddings() is model.text_model.embeddings.word_embeddings
    model.resize_token_embeddings(VOCAB_SIZE + 5)
    assert model.get_input_embeddings().weight.shape == (VOCAB_SIZE + 5, 32)
    assert model.config.text_config.vocab_size == VOCAB_SIZE + 5
    ids, mask = random_captions(3, 6, seed=8)
    ids[:, 1] = VOCAB_SIZE + 4  # a new token: accepted by the input checks, embedded by the new row
    with torch.no_grad():
        out = model(PIXELS, ids, mask)
    assert torch.isfinite(out.logits_per_image).all()
    replacement = torch.nn.Embedding(VOCAB_SIZE + 5, 32)
    model.set_input_embeddings(replacement)
    assert model.text_model.embeddings.word_embeddings is replacement


@pytest.mark.slow
def test_similarity_compiles_with_inductor_on_cpu():
    """`torch.compile` of `similarity` with the default (inductor) backend on CPU, as on CUDA: same scores (the
    input checks and the block loop are graph breaks, the scoring blocks are compiled). The official variant only:
    the paper variant compiles too, in about twice the time."""
    model = tiny_model("official")
    ids, mask = random_captions(5, 7, seed=9)
    dense_ids, dense_mask = random_captions(3, 10, seed=10)
    with torch.no_grad():
        images, texts = model.encode_image(PIXELS), model.encode_text(ids, mask)
        dense = model.encode_text(dense_ids, dense_mask)
        expected = model.similarity(images, texts, mask, dense, dense_mask)
        scores = torch.compile(model.similarity)(images, texts, mask, dense, dense_mask)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
