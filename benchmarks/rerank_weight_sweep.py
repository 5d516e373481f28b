"""CaptionT5's caption re-ranking weight swept offline over an evaluation's saved candidates.

An evaluation with ``eval.rerank`` writes every candidate caption with its log-probability and the
CLIP cosine to its samples file; the caption chosen at weight ``w`` is the candidate with the largest
``logprob + w * clip``, so any weight can be scored without running the model again (at the run's own
weight this reproduces its CIDEr). Prints CIDEr and the synthetic attributes named at each weight and
the weight with the best CIDEr (ties: the smaller weight); writes ``<samples>.sweep.json``.

  python benchmarks/rerank_weight_sweep.py runs/v8_rerank_val_s0/samples_step-1.jsonl
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t5video.evaluate import caption_metrics, attributes

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)

def metrics(rows, w):
  caps = {}
  for r in rows:
    c = max(r["candidates"], key=lambda c: c["logprob"] + w * c["clip"])
    caps[r["video_id"]] = c["caption"]
  m = caption_metrics.compute_caption_metrics({r["video_id"]: r["references"] for r in rows},
                                              {k: [v] for k, v in caps.items()}, meteor=False)
  known = [r for r in rows if r.get("attributes_true")]
  m.update(attributes.attribute_accuracy([caps[r["video_id"]] for r in known], [r["attributes_true"] for r in known],
                                         attributes.synthetic_vocabulary()))
  return m

if __name__ == "__main__":
  path = sys.argv[1]
  rows = [json.loads(l) for l in open(path) if l.strip()]
  rows = [r for r in rows if r.get("candidates")]
  out = {w: metrics(rows, w) for w in WEIGHTS}
  for w, m in out.items():
    print(f"w={w:5.1f} CIDEr {100*m['CIDEr']:6.2f} action {100*m['attribute_action_accuracy']:6.2f} colour {100*m['attribute_colour_accuracy']:6.2f}")
  best = max(WEIGHTS, key=lambda w: (out[w]["CIDEr"], -w))
  print("best", best)
  json.dump({str(w): m for w, m in out.items()} | {"best": best}, open(path + ".sweep.json", "w"))
