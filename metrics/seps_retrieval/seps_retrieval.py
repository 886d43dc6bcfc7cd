"""Image-text retrieval R@K / rSum as a Hugging Face `evaluate` module (the metric of transformers_seps)."""

import datasets
import evaluate
import numpy as np

from transformers_seps.metrics import retrieval_metrics

_DESCRIPTION = """
Recall@1/5/10 of image-to-text (i2t) and text-to-image (t2i) retrieval, median and mean rank, and rSum (the
sum of the six recalls), computed as VSE++, SCAN and LAPS do: an image's i2t rank is the best rank among its
captions; ties count against the query.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one row per caption, its scores against every image of the gallery (num_images floats, the
        same image order for every caption): the transposed (num_images, num_captions) similarity matrix.
    references: for each caption, the index of its image in that order.
Returns:
    i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10 (percent), i2t_medr, i2t_meanr, t2i_medr, t2i_meanr, rsum.
Example:
    >>> metric = evaluate.load("metrics/seps_retrieval")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])["rsum"]
    600.0
"""

_CITATION = """
@article{mao2025seps,
  title={SEPS: Semantic-enhanced Patch Slimming Framework for fine-grained cross-modal alignment},
  author={Mao, Xinyu and Li, Junsi and Zhang, Haoji and Liang, Yu and Sun, Ming},
  journal={arXiv preprint arXiv:2511.01390},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SepsRetrieval(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions: list[list[float]], references: list[int]) -> dict[str, float]:
        row_lengths = sorted({len(row) for row in predictions})
        if len(row_lengths) > 1:
            raise ValueError(
                "predictions must hold one score per gallery image in every row; rows have "
                f"{row_lengths[0]} to {row_lengths[-1]} scores"
            )
        similarity = np.asarray(predictions, dtype=np.float64).T
        return retrieval_metrics(similarity, references)
