"""Transformers' shared test suites run on SEPS, as on every model Transformers ships: `ModelTesterMixin` for
`SepsModel` (both variants: tiny ViT + tiny BERT, `pixel_values`, `input_ids`, `attention_mask`,
`return_loss=True`) and `ConfigTester` for `SepsConfig`.

The suites come from the source archive of the installed Transformers release (`make common-tests`, see
`tests/transformers_common/__init__.py`); without it this module is skipped (under `make test` it fails).
docs/conformance.md lists the skips below.
"""

import unittest

import pytest
from conftest import VOCAB_SIZE, tiny_bert_config, tiny_vit_config
from transformers_common import load_common_tests

from transformers_seps import SepsConfig, SepsModel

common = load_common_tests()
modeling_common = common.module("test_modeling_common")
ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = common.module("test_configuration_common").ConfigTester

pytestmark = pytest.mark.slow


class SepsModelTester:
    """Tiny SEPS models and paired batches (caption k describes image k, as `return_loss=True` needs)."""

    def __init__(self, parent: unittest.TestCase, variant: str, batch_size: int = 2, seq_length: int = 7):
        self.parent = parent
        self.variant = variant
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = True
        self.vision_config = tiny_vit_config()
        self.text_config = tiny_bert_config()
        # What the suite reads of a tester: the text backbone's (the vision backbone's are the same).
        self.hidden_size = self.text_config.hidden_size
        self.num_hidden_layers = self.text_config.num_hidden_layers
        self.num_attention_heads = self.text_config.num_attention_heads
        self.image_size = self.vision_config.image_size
        self.patch_size = self.vision_config.patch_size

    def get_config(self) -> SepsConfig:
        return SepsConfig(
            vision_config=self.vision_config.to_dict(),
            text_config=self.text_config.to_dict(),
            embed_dim=24,
            variant=self.variant,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[SepsConfig, dict]:
        image_size = self.vision_config.image_size
        pixel_values = modeling_common.floats_tensor([self.batch_size, 3, image_size, image_size])
        input_ids = modeling_common.ids_tensor([self.batch_size, self.seq_length], VOCAB_SIZE)
        attention_mask = modeling_common.random_attention_mask([self.batch_size, self.seq_length])
        inputs = {
            "pixel_values": pixel_values,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "return_loss": True,
        }
        if self.variant == "paper":
            # The paper's full model: every image with its dense caption (else the dense branch gets no gradient).
            # Ids in the lower half of the vocabulary: test_resize_tokens_embeddings shrinks it (and clamps only
            # `input_ids`).
            inputs["dense_input_ids"] = modeling_common.ids_tensor([self.batch_size, self.seq_length], VOCAB_SIZE // 2)
        return self.get_config(), inputs


# The suite's tests of a model's top-level `hidden_states` / `attentions`: a two-tower model has none (as CLIP); SEPS
# returns its backbones' in `vision_model_output` / `text_model_output` (tests/test_model_features.py checks them).
_TWO_TOWER_REASON = (
    "a two-tower model has no top-level {}: the backbones' are in vision_model_output / text_model_output "
    "(tests/test_model_features.py)"
)


class SepsPaperModelTest(ModelTesterMixin, unittest.TestCase):
    variant = "paper"
    all_model_classes = (SepsModel,)
    _is_composite = True
    # Check `_init_weights` covers every weight (the suite skips that for models from before 2023, by the year in
    # the configuration file's copyright line, which ours does not have).
    test_can_init_all_missing_weights_before_2023 = True
    # Inputs besides `main_input_name` (`pixel_values`) that the eager-vs-SDPA comparison passes to `forward`.
    additional_model_inputs = ["input_ids", "dense_input_ids"]

    def setUp(self) -> None:
        if self._testMethodName.startswith("test_eager_matches_sdpa_inference") and "fp32" not in self._testMethodName:
            self.skipTest(
                "eager vs SDPA in float16/bfloat16 on CPU: slow, and the float32 cases compare the same attention "
                "(the SEPS head computes in float32 in any dtype, tests/test_precision.py)"
            )
        self.model_tester = SepsModelTester(self, self.variant)
        self.config_tester = ConfigTester(self, config_class=SepsConfig, has_text_modality=False)

    def test_config(self) -> None:
        self.config_tester.run_common_tests()

    @unittest.skip(_TWO_TOWER_REASON.format("hidden_states"))
    def test_hidden_states_output(self) -> None: ...

    @unittest.skip(_TWO_TOWER_REASON.format("attentions"))
    def test_attention_outputs(self) -> None: ...

    @unittest.skip(_TWO_TOWER_REASON.format("hidden_states or attentions"))
    def test_retain_grad_hidden_states_attentions(self) -> None: ...


class SepsOfficialModelTest(SepsPaperModelTest):
    variant = "official"
