"""Binary accuracy of a trained ViFi-CLIP on the synthetic order pairs, closed-set top-1 with each
class's recall, and zero-shot accuracy of the key object's colour, shape and size, on a rendering
of the synthetic world.

For each pair of classes that differ only in temporal order ("moves left" / "moves right",
"grows then shrinks" / "shrinks then grows", ...) whose two classes both have clips, every
clip of the pair is scored zero-shot against just the two class prompts (the run's own
template and multi-view setting); chance is 50%. Classes held out of training
(configs/vificlip/synthetic.py's NOVEL_CLASSES) are scored zero-shot like the others. The
attributes are scored over every clip against prompts naming each value ("a video of a red
object", "a video of a star", "a video of a large object"; chance 1/8, 1/8, 1/3; a clip
whose key object changes colour counts its first colour, and colour is also reported over the
clips whose object keeps its colour; clips whose captions name no size are left out of size)::

  python benchmarks/vificlip_order_pairs.py --workdir runs/vifi_ordered_s0 \\
      --data data_cache/synthetic_vificlip

``--split all`` scores every clip of a rendering the run never trained on (a held-out one).
Each clip is decoded and embedded once.
"""

from __future__ import annotations

import argparse
import json
import os

PAIRS = (("moves left", "moves right"), ("moves up", "moves down"), ("grows", "shrinks"),
         ("appears", "disappears"), ("grows then shrinks", "shrinks then grows"))
ATTRIBUTE_TEMPLATES = {"colour": "a video of a {} object", "shape": "a video of a {}",
                       "size": "a video of a {} object"}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--data", default="data_cache/synthetic_vificlip")
  p.add_argument("--split", default="test", help="a split, or 'all' (for a held-out rendering)")
  p.add_argument("--out", default="", help="also write the result to this JSON file")
  args = p.parse_args()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from t5video.data import synthetic  # pylint: disable=g-import-not-at-top
  from t5video.data.records import VideoRecord  # pylint: disable=g-import-not-at-top
  from t5video.recipes.vificlip import predict  # pylint: disable=g-import-not-at-top

  rows = [json.loads(line) for line in open(os.path.join(args.data, "annotations.jsonl"))]
  rows = [r for r in rows if args.split in ("all", r["split"])]
  if not rows:
    raise SystemExit(f"no clips of split {args.split!r} in {args.data}")
  task, params = predict.restore(args.workdir)
  records = [VideoRecord(video_id=r["video_id"], path=os.path.join(args.data, r["path"])) for r in rows]
  emb, ok = task.predictor.embed_records(params, records)
  if not all(ok):
    raise SystemExit(f"cannot decode {sum(not g for g in ok)} clips of {args.data}")
  template = task.config.eval.zero_shot_template or task.config.model.prompt_template

  out: dict = {"data": args.data, "split": args.split, "clips": len(rows)}
  # Closed-set top-1 over the run's training classes (clips of those classes), with each class's recall.
  classes = list(task.train_classes)
  idx = np.asarray([i for i, r in enumerate(rows) if r["label"] in classes])
  truth = np.asarray([classes.index(rows[i]["label"]) for i in idx])
  pred = task.predictor.class_scores(params, emb[idx], classes, template).argmax(1)  # [n]
  out["closed top-1"] = {"accuracy": round(100.0 * float((pred == truth).mean()), 1), "clips": len(idx),
                         "recall": {c: round(100.0 * float((pred[truth == k] == k).mean()), 1)
                                    for k, c in enumerate(classes) if (truth == k).any()}}
  for a, b in PAIRS:
    idx = [i for i, r in enumerate(rows) if r["label"] in (a, b)]
    if not {rows[i]["label"] for i in idx} >= {a, b}:
      continue
    scores = task.predictor.class_scores(params, emb[np.asarray(idx)], [a, b], template)  # [n, 2]
    right = sum((s[0] > s[1]) == (rows[i]["label"] == a) for s, i in zip(scores, idx))
    out[f"{a} / {b}"] = {"accuracy": round(100.0 * right / len(idx), 1), "clips": len(idx)}
  values = {"colour": list(synthetic.COLOURS), "shape": list(synthetic.SHAPES), "size": list(synthetic.SIZES)}
  for attr, options in values.items():
    # Clips whose captions name no size have none recorded: they are left out of that attribute.
    idx = np.asarray([i for i, r in enumerate(rows) if r["attributes"].get(attr) is not None])
    truth = np.asarray([options.index(rows[i]["attributes"][attr]) for i in idx])
    scores = task.predictor.class_scores(params, emb[idx], options, ATTRIBUTE_TEMPLATES[attr])  # [n, options]
    right = scores.argmax(1) == truth  # [n]
    out[f"attribute {attr}"] = {"accuracy": round(100.0 * float(right.mean()), 1), "clips": len(idx),
                                "majority": round(100.0 * float(np.bincount(truth).max() / len(idx)), 1)}
    if attr == "colour":  # a clip whose object changes colour has two right answers; also score without them
      steady = np.asarray(["changes colour" not in rows[i]["label"] for i in idx])
      out[f"attribute {attr}"].update(steady_accuracy=round(100.0 * float(right[steady].mean()), 1),
                                      steady_clips=int(steady.sum()))
  print(json.dumps(out, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
