import numpy as np
import pytest

from transformers_seps.evaluation import METRIC_KEYS, recall_metrics, retrieval_metrics, retrieval_ranks


def test_ranks_hand_computed():
    # 3 images, 2 captions each (captions 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2).
    caption_to_image = [0, 0, 1, 1, 2, 2]
    sims = np.array(
        [
            [0.9, 0.1, 0.2, 0.3, 0.0, 0.0],  # image 0: its caption 0 is first -> rank 1
            [0.5, 0.4, 0.3, 0.1, 0.6, 0.0],  # image 1: best own 0.3; 0.5, 0.4, 0.6 ahead -> rank 4
            [0.2, 0.2, 0.9, 0.8, 0.1, 0.7],  # image 2: best own 0.7; 0.9, 0.8 ahead -> rank 3
        ]
    )
    i2t, t2i = retrieval_ranks(sims, caption_to_image)
    assert i2t.tolist() == [1, 4, 3]
    # caption 0: image 0 has 0.9, best -> 1; caption 1: 0.1 vs 0.4, 0.2 -> 3; caption 2: 0.3 vs 0.2, 0.9 -> 2;
    # caption 3: 0.1 vs 0.3, 0.8 -> 3; caption 4: 0.1 vs 0.0, 0.6 -> 2; caption 5: 0.7 vs 0.0, 0.0 -> 1.
    assert t2i.tolist() == [1, 3, 2, 3, 2, 1]
    metrics = recall_metrics(i2t, t2i)
    assert metrics["i2t_r1"] == pytest.approx(100 / 3)
    assert metrics["i2t_r5"] == pytest.approx(100.0)
    assert metrics["t2i_r1"] == pytest.approx(100 * 2 / 6)
    assert metrics["t2i_medr"] == 2.0 and metrics["t2i_meanr"] == pytest.approx(2.0)
    assert metrics["i2t_medr"] == 3.0 and metrics["i2t_meanr"] == pytest.approx(8 / 3)
    assert metrics["rsum"] == pytest.approx(sum(metrics[key] for key in METRIC_KEYS[:-1]))


def test_ties_count_against_the_query():
    # A constant model must get no credit: every wrong candidate ties with the right one.
    sims = np.zeros((4, 8))
    i2t, t2i = retrieval_ranks(sims, [0, 0, 1, 1, 2, 2, 3, 3])
    assert i2t.tolist() == [7, 7, 7, 7]  # 6 wrong captions tie with the best own one
    assert t2i.tolist() == [4] * 8  # 3 wrong images tie
    # A tie between two right captions does not hurt.
    sims = np.array([[0.5, 0.5, 0.1], [0.3, 0.2, 0.3]])
    i2t, _ = retrieval_ranks(sims, [0, 0, 1])
    assert i2t.tolist() == [1, 2]  # image 1: caption 0 (wrong) ties with its own caption 2


def test_perfect_and_reversed_models():
    rng = np.random.default_rng(0)
    caption_to_image = np.repeat(np.arange(20), 5)
    perfect = rng.random((20, 100)) - 10 * (caption_to_image[None] != np.arange(20)[:, None])
    metrics = retrieval_metrics(perfect, caption_to_image)
    assert metrics["rsum"] == pytest.approx(600.0)
    assert metrics["i2t_medr"] == metrics["t2i_medr"] == 1.0
    reversed_metrics = retrieval_metrics(-perfect, caption_to_image)
    assert reversed_metrics["rsum"] == 0.0
    assert reversed_metrics["t2i_medr"] == 20.0 and reversed_metrics["i2t_medr"] == 96.0


@pytest.mark.parametrize(
    ("sims", "targets", "message"),
    [
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), [0, 1], "NaN"),
        (np.zeros((2, 3)), [0, 1], "one per caption"),
        (np.zeros((2, 3)), [0, 0, 0], "images \\[1\\] have none"),
        (np.zeros((2, 2)), [0, 2], "must index the 2 images"),
    ],
)
def test_bad_input(sims, targets, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(sims, targets)
