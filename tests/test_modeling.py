import pytest
import torch
from conftest import EMBED_DIM, random_captions, tiny_config, tiny_model, tiny_swin_config
from reference_seps import reference_similarity

from transformers_seps import SepsModel
from transformers_seps.modeling_seps import gumbel_keep_mask, masked_softmax, top_k_padded, vse_triplet_loss


def random_embeds(model: SepsModel, num_images: int, num_texts: int, seed: int, with_dense: bool):
    generator = torch.Generator().manual_seed(seed)
    tokens = model.config.num_patches + int(model.config.vision_cls_token)
    images = torch.randn(num_images, tokens, EMBED_DIM, generator=generator)
    texts = torch.randn(num_texts, 9, EMBED_DIM, generator=generator)
    _, text_mask = random_captions(num_texts, 9, seed)
    dense = dense_mask = None
    if with_dense:
        dense = torch.randn(num_images, 14, EMBED_DIM, generator=generator)
        _, dense_mask = random_captions(num_images, 14, seed + 1, min_len=6)
    return images, texts, text_mask, dense, dense_mask


@pytest.mark.parametrize("with_dense", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_similarity_matches_one_caption_reference(variant, with_dense, chunk_size):
    model = tiny_model(variant)
    images, texts, text_mask, dense, dense_mask = random_embeds(model, 5, 6, seed=1, with_dense=with_dense)
    with torch.no_grad():
        fast = model.similarity(images, texts, text_mask, dense, dense_mask, chunk_size=chunk_size)
        slow = reference_similarity(model, images, texts, text_mask, dense, dense_mask)
    assert fast.shape == (5, 6)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("keep_cls_and_extra_token", [False, True])
def test_paper_variant_without_cls_backbone_matches_reference(keep_cls_and_extra_token):
    torch.manual_seed(0)
    config = tiny_config("paper", vision_config=tiny_swin_config(), keep_cls_and_extra_token=keep_cls_and_extra_token)
    assert (config.num_patches, config.vision_cls_token) == (16, False)
    model = SepsModel(config).eval()
    images, texts, text_mask, dense, dense_mask = random_embeds(model, 3, 4, seed=2, with_dense=True)
    with torch.no_grad():
        fast = model.similarity(images, texts, text_mask, dense, dense_mask, chunk_size=5)
        slow = reference_similarity(model, images, texts, text_mask, dense, dense_mask)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_forward_scores_pixels_and_tokens_like_similarity(variant):
    model = tiny_model(variant)
    pixels = torch.randn(3, 3, 40, 40)
    ids, mask = random_captions(4, 8, seed=3)
    dense_ids, dense_mask = random_captions(3, 12, seed=4)
    with torch.no_grad():
        out = model(pixels, ids, mask, dense_ids, dense_mask)
        images = model.encode_image(pixels)
        texts = model.encode_text(ids, mask)
        dense = model.encode_text(dense_ids, dense_mask)
        expected = reference_similarity(model, images, texts, mask, dense, dense_mask)
    assert images.shape == (3, 1 + 25, EMBED_DIM) and texts.shape == (4, 8, EMBED_DIM)
    torch.testing.assert_close(out.logits_per_image, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits_per_text, expected.t())
    assert out.sparse_keep_mask.shape == (3, 4, 25)
    assert torch.all(out.sparse_keep_mask.sum(-1) == model.config.num_kept_patches)


def test_padding_does_not_change_scores(variant):
    model = tiny_model(variant)
    images, texts, text_mask, dense, dense_mask = random_embeds(model, 4, 3, seed=5, with_dense=True)
    padded_texts = torch.cat([texts, torch.randn(3, 4, EMBED_DIM)], dim=1)
    padded_mask = torch.cat([text_mask, torch.zeros(3, 4, dtype=text_mask.dtype)], dim=1)
    with torch.no_grad():
        plain = model.similarity(images, texts, text_mask, dense, dense_mask)
        padded = model.similarity(images, padded_texts, padded_mask, dense, dense_mask)
    torch.testing.assert_close(plain, padded, atol=1e-6, rtol=0)


def test_dense_caption_only_affects_its_own_image(variant):
    """Spec section 2: S(I_j, T_i) may use D_j and nothing else."""
    model = tiny_model(variant)
    images, texts, text_mask, dense, dense_mask = random_embeds(model, 4, 5, seed=6, with_dense=True)
    changed = dense.clone()
    changed[2] = torch.randn_like(changed[2])
    with torch.no_grad():
        before = model.similarity(images, texts, text_mask, dense, dense_mask)
        after = model.similarity(images, texts, text_mask, changed, dense_mask)
    unchanged_rows = [0, 1, 3]
    torch.testing.assert_close(before[unchanged_rows], after[unchanged_rows], atol=1e-6, rtol=0)
    assert (before[2] - after[2]).abs().max() > 1e-4


def test_without_dense_captions_the_official_score_is_the_single_branch(variant):
    model = tiny_model("official")
    images, texts, text_mask, dense, dense_mask = random_embeds(model, 3, 4, seed=7, with_dense=True)
    with torch.no_grad():
        sparse_only = model.similarity(images, texts, text_mask)
        both = model.similarity(images, texts, text_mask, dense, dense_mask)
        own_dense = torch.stack(
            [model.similarity(images[j : j + 1], dense[j : j + 1], dense_mask[j : j + 1])[0, 0] for j in range(3)]
        )
    torch.testing.assert_close(both, sparse_only + own_dense[:, None], atol=1e-5, rtol=0)


def test_training_decisions_are_sampled_hard_masks_with_a_ratio_gradient():
    model = tiny_model("paper").train()
    torch.manual_seed(11)
    pixels = torch.randn(4, 3, 40, 40)
    ids, mask = random_captions(4, 8, seed=8)
    dense_ids, dense_mask = random_captions(4, 12, seed=9)
    out = model(pixels, ids, mask, dense_ids, dense_mask, return_loss=True)
    keep = out.sparse_keep_mask.detach()
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    counts = keep.sum(-1).flatten()
    assert counts.unique().numel() > 1, "Gumbel decisions should keep a varying number of patches"
    assert out.dense_keep_mask is not None and out.dense_keep_mask.shape == (4, 25)
    out.ratio_loss.backward(retain_graph=True)
    scorer_grad = model.head.patch_scorer.mlp[0].weight.grad
    assert scorer_grad is not None and scorer_grad.abs().sum() > 0
    model.zero_grad()
    out.alignment_loss.backward()
    # The alignment loss reaches the selection scores through the straight-through masks.
    assert model.head.patch_scorer.mlp[0].weight.grad.abs().sum() > 0
    assert model.head.sparse_aggregator.mlp[1].weight.grad.abs().sum() > 0


def test_eval_mode_is_deterministic_top_k():
    model = tiny_model("paper")
    pixels = torch.randn(2, 3, 40, 40)
    ids, mask = random_captions(3, 8, seed=10)
    with torch.no_grad():
        first = model(pixels, ids, mask)
        second = model(pixels, ids, mask)
    torch.testing.assert_close(first.logits_per_image, second.logits_per_image, atol=0, rtol=0)
    assert torch.all(first.sparse_keep_mask.sum(-1) == model.config.num_kept_patches)


def test_official_ratio_loss_is_constant_without_gradient():
    model = tiny_model("official").train()
    pixels = torch.randn(3, 3, 40, 40)
    ids, mask = random_captions(3, 8, seed=12)
    out = model(pixels, ids, mask, return_loss=True)
    config = model.config
    expected = (config.num_kept_patches / config.num_patches - config.sparse_ratio) ** 2
    assert out.ratio_loss.item() == pytest.approx(expected, rel=1e-4)
    assert not out.ratio_loss.requires_grad
    out.loss.backward()
    assert model.head.aggregator.mlp[1].weight.grad.abs().sum() > 0


def test_gumbel_mask_straight_through():
    probability = torch.full((2000,), 0.3, requires_grad=True)
    torch.manual_seed(0)
    mask = gumbel_keep_mask(probability, tau=1.0)
    assert set(mask.detach().unique().tolist()) == {0.0, 1.0}
    assert abs(mask.mean().item() - 0.3) < 0.05
    mask.sum().backward()
    assert torch.all(probability.grad > 0)


def test_masked_softmax_ignores_dropped_and_survives_empty_masks():
    logits = torch.tensor([[1.0, 5.0, 2.0], [0.5, 0.1, 0.2]])
    keep = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    weights = masked_softmax(logits, keep)
    kept = torch.tensor([1.0, 2.0]).softmax(0)
    torch.testing.assert_close(weights[0], torch.tensor([kept[0], 0.0, kept[1]]))
    assert torch.all(weights[1] == 0)


def test_top_k_pads_short_captions_with_their_smallest_match():
    values = torch.tensor([[0.2, 0.9, 0.5, 0.7], [0.3, 0.8, 0.1, 0.4]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    top = top_k_padded(values, mask, k=3)
    torch.testing.assert_close(top, torch.tensor([[0.9, 0.7, 0.5], [0.8, 0.3, 0.3]]))
    top_long = top_k_padded(values[:1], None, k=6)
    torch.testing.assert_close(top_long, torch.tensor([[0.9, 0.7, 0.5, 0.2, 0.2, 0.2]]))


def test_short_captions_score_without_error(variant):
    """A one-word caption has 3 tokens ([CLS] w [SEP]) < relevance_topk = 5."""
    model = tiny_model(variant)
    images, texts, _, _, _ = random_embeds(model, 3, 2, seed=13, with_dense=False)
    mask = torch.zeros(2, 9, dtype=torch.long)
    mask[0, :3] = 1
    mask[1, :1] = 1
    with torch.no_grad():
        fast = model.similarity(images, texts, mask)
        slow = reference_similarity(model, images, texts, mask)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_triplet_loss_hand_computed():
    scores = torch.tensor([[0.9, 0.5, 0.2], [0.3, 0.6, 0.65], [0.1, 0.7, 0.8]])
    # Hardest negatives with margin 0.2: rows (i2t) 0.5-0.9+0.2=0 -> 0 ; 0.65-0.6+0.2=0.25 ; 0.7-0.8+0.2=0.1
    # columns (t2i): 0.3-0.9+0.2<0 -> 0 ; 0.7-0.6+0.2=0.3 ; 0.65-0.8+0.2=0.05
    loss = vse_triplet_loss(scores, None, margin=0.2, max_violation=True)
    assert loss.item() == pytest.approx(0.25 + 0.1 + 0.3 + 0.05)
    summed = vse_triplet_loss(scores, None, margin=0.2, max_violation=False)
    # Summed: the hardest ones plus column 1's other violation 0.5-0.6+0.2 = 0.1.
    assert summed.item() == pytest.approx(0.25 + 0.1 + 0.3 + 0.05 + 0.1)
    # Pairs 1 and 2 show the same image: 0.25, 0.1, 0.3 and 0.05 were violations by positives; 0.1 stays.
    same = vse_triplet_loss(scores, torch.tensor([0, 7, 7]), margin=0.2, max_violation=True)
    assert same.item() == pytest.approx(0.1)


def test_keep_masks_and_scores_follow_the_caption_order(variant):
    # Captions are scored in order of length; results must come back in the caller's order.
    model = tiny_model(variant)
    model.config.similarity_chunk_size = 4  # blocks of 4 captions: sorting moves captions across blocks
    images, texts, _, dense, dense_mask = random_embeds(model, 3, 5, seed=8, with_dense=True)
    text_mask = torch.zeros(5, 9, dtype=torch.long)
    for row, length in enumerate([9, 2, 7, 4, 5]):
        text_mask[row, :length] = 1
    with torch.no_grad():
        together = model.score_embeddings(images, texts, text_mask, dense, dense_mask)
        for caption in range(5):
            alone = model.score_embeddings(
                images, texts[caption : caption + 1], text_mask[caption : caption + 1], dense, dense_mask
            )
            torch.testing.assert_close(together.logits_per_image[:, caption], alone.logits_per_image[:, 0])
            assert torch.equal(together.sparse_keep_mask[:, caption], alone.sparse_keep_mask[:, 0])
