"""Block sizes of `SepsModel.similarity`: an explicit `chunk_size` wins over `config.similarity_chunk_size`, which
wins over the device's default (the measured CPU block; on CUDA, what fits in a share of the free memory, the
CUDA query mocked here); blocks hold several images; and the scores do not depend on the blocks."""

from unittest import mock

import pytest
import torch
from conftest import EMBED_DIM, random_captions, tiny_config, tiny_model

from transformers_seps.modeling_seps import CPU_CHUNK_SIZE, CUDA_MEMORY_SHARE, default_similarity_chunk_size

CUDA = torch.device("cuda")


def cuda_with_free_memory(free_bytes: int):
    return mock.patch("torch.cuda.mem_get_info", return_value=(free_bytes, 2 * free_bytes))


def test_on_cpu_the_default_block_is_the_measured_one():
    config = tiny_config("official")
    assert default_similarity_chunk_size(config, torch.device("cpu"), max_words=16) == CPU_CHUNK_SIZE == 512


def test_on_cuda_the_default_block_fills_a_share_of_the_free_memory():
    config = tiny_config("official")
    with cuda_with_free_memory(2**30) as query:
        one_gigabyte = default_similarity_chunk_size(config, CUDA, max_words=16)
    query.assert_called_once_with(CUDA)
    with cuda_with_free_memory(2**32):
        four_gigabytes = default_similarity_chunk_size(config, CUDA, max_words=16)
    with cuda_with_free_memory(2**30):
        long_captions = default_similarity_chunk_size(config, CUDA, max_words=128)
    with cuda_with_free_memory(1000):
        almost_full = default_similarity_chunk_size(config, CUDA, max_words=16)
    assert one_gigabyte > CPU_CHUNK_SIZE  # a tiny config's pairs are small: far more than the CPU block fit
    assert abs(four_gigabytes - 4 * one_gigabyte) <= 4  # proportional to the free memory
    assert long_captions < one_gigabyte  # longer captions, larger patch-word products, fewer pairs
    assert almost_full == 1
    # The block's float32 intermediates (N_c x N three times, K x N, N x W twice) stay within the share.
    n, k, n_c = config.num_patches, config.num_kept_patches, config.num_aggregated_patches
    block_bytes = one_gigabyte * 4 * (3 * n_c * n + k * n + 2 * n * 16)
    assert block_bytes <= CUDA_MEMORY_SHARE * 2**30 < block_bytes + 4 * (3 * n_c * n + k * n + 2 * n * 16)


def test_an_explicit_block_wins_over_the_config_which_wins_over_the_device():
    model = tiny_model("official")
    assert model.config.similarity_chunk_size is None
    with cuda_with_free_memory(2**30) as query:
        assert model._chunk_size(None, CUDA, 16) == default_similarity_chunk_size(model.config, CUDA, 16)
        query.reset_mock()
        assert model._chunk_size(7, CUDA, 16) == 7
        model.config.similarity_chunk_size = 5
        assert model._chunk_size(None, CUDA, 16) == 5
        assert model._chunk_size(7, CUDA, 16) == 7
    query.assert_not_called()


@pytest.mark.parametrize(
    ("num_texts", "chunk", "expected"),
    [(64, 256, (8, 32)), (64, 512, (8, 64)), (5, 256, (51, 5)), (64, 4, (4, 1)), (1000, 100000, (100, 1000))],
)
def test_a_block_holds_several_images_and_a_share_of_the_captions(num_texts, chunk, expected):
    images_per_block, texts_per_block = tiny_model("official")._pair_block_size(num_texts, chunk)
    assert (images_per_block, texts_per_block) == expected
    assert images_per_block * texts_per_block <= max(chunk, 1)


def test_scores_do_not_depend_on_the_blocks(variant):
    model = tiny_model(variant)
    generator = torch.Generator().manual_seed(2)
    tokens = model.config.num_patches + 1
    images = torch.randn(5, tokens, EMBED_DIM, generator=generator)
    _, text_mask = random_captions(7, 9, seed=6)
    _, dense_mask = random_captions(5, 10, seed=7)
    texts = torch.randn(7, 9, EMBED_DIM, generator=generator)
    dense = torch.randn(5, 10, EMBED_DIM, generator=generator)
    with torch.no_grad():
        default = model.similarity(images, texts, text_mask, dense, dense_mask)
        for chunk_size in (1, 3, 8, 1000):
            blocked = model.similarity(images, texts, text_mask, dense, dense_mask, chunk_size=chunk_size)
            torch.testing.assert_close(blocked, default, atol=1e-6, rtol=1e-6)
