"""Evaluation: caption, classification and retrieval metrics, and decoding searches.

Modules:
  caption_metrics: CIDEr-D, BLEU-1..4, ROUGE-L (our own code, equal to
    pycocoevalcap) and METEOR (pycocoevalcap's jar, when Java is present);
    ``compute_caption_metrics`` is the entry point.
  classification: top-k accuracy, macro-F1, per-class recall, head/tail
    breakdown, tag F1, rank classification, free-generation matching,
    multi-view aggregation, base-to-novel harmonic mean.
  retrieval: text<->video R@K, median and mean rank (CLIP4Clip's definition).
  controls: the controls every evaluation table carries (another clip's
    frames; the same recipe on constant pixels, as a stage).
  attributes: per-attribute accuracy of generated captions (the key object,
    the actions in order, each order pair) against the synthetic world's truth.
  decoding: jit-compatible greedy search, beam search and top-p sampling over a
    cached step function.
"""

from t5video.evaluate.caption_metrics import compute_caption_metrics
from t5video.evaluate.classification import classification_report
from t5video.evaluate.decoding import DecodeResult, beam_search, greedy_search, sample
from t5video.evaluate.retrieval import retrieval_metrics

__all__ = [
    "DecodeResult",
    "beam_search",
    "classification_report",
    "compute_caption_metrics",
    "greedy_search",
    "retrieval_metrics",
    "sample",
]
