"""Binary accuracy of a trained ViFi-CLIP on the synthetic order pairs of its test split.

For each pair of classes that differ only in temporal order ("moves left" / "moves right",
"grows then shrinks" / "shrinks then grows", ...) whose two classes both have test clips, every
test clip of the pair is scored zero-shot against just the two class prompts
(:func:`t5video.recipes.vificlip.predict.zero_shot`, the run's own multi-view setting); chance is
50%. Classes held out of training (configs/vificlip/synthetic.py's NOVEL_CLASSES) are scored
zero-shot like the others::

  python benchmarks/vificlip_order_pairs.py --workdir runs/vifi_ordered_s0 \\
      --data data_cache/synthetic_vificlip
"""

from __future__ import annotations

import argparse
import json
import os

PAIRS = (("moves left", "moves right"), ("moves up", "moves down"), ("grows", "shrinks"),
         ("appears", "disappears"), ("grows then shrinks", "shrinks then grows"))


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--data", default="data_cache/synthetic_vificlip")
  p.add_argument("--split", default="test")
  args = p.parse_args()
  from t5video.recipes.vificlip import predict  # pylint: disable=g-import-not-at-top
  rows = [json.loads(line) for line in open(os.path.join(args.data, "annotations.jsonl"))]
  out = {}
  for a, b in PAIRS:
    clips = [r for r in rows if r["split"] == args.split and r["label"] in (a, b)]
    if not {r["label"] for r in clips} >= {a, b}:
      continue
    videos = [os.path.join(args.data, r["path"]) for r in clips]
    probs = predict.zero_shot(args.workdir, [a, b], videos)
    right = sum((pr[a] > pr[b]) == (r["label"] == a) for pr, r in zip(probs, clips))
    out[f"{a} / {b}"] = {"accuracy": round(100.0 * right / len(clips), 1), "clips": len(clips)}
  print(json.dumps(out, indent=1))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
