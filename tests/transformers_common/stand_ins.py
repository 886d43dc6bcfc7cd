"""Our minimal versions of the four modules Transformers' common test suites import but its source archive lacks.

`load_common_tests()` serves this one module under each of their names:
`tests/generation/test_utils.py` (`GenerationTesterMixin`), `tests/utils/test_configuration_utils.py`
(`config_common_kwargs`), `tests/exporters/test_export.py` (`ExportTesterMixin`) and the repository's
`utils/fetch_hub_objects_for_ci.py` (`url_to_local_path`).
"""


class GenerationTesterMixin:
    """The generation tests' mixin. Empty: `ModelTesterMixin` only checks that a tester inherits it exactly when its
    model can generate, and no SEPS model does."""


class ExportTesterMixin:
    """The `torch.export` tests' mixin (base class of `ModelTesterMixin`). Empty: those tests are not in the archive,
    so they do not run here."""


# Values different from every `PreTrainedConfig` default, which `ConfigTester.check_config_arguments_init` sets and
# reads back (for a config without sub-configs; a composite config such as `SepsConfig` skips that check).
config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": False,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}


def url_to_local_path(url: str) -> str:
    """Transformers' CI maps the URL of a test image, audio or video file to a copy it downloaded beforehand. Nothing
    is downloaded here: the URL is returned unchanged, and a test that opens it needs the network."""
    return url
