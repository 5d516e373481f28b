"""Renders the two held-out renderings that the ViFi-CLIP goals are checked on (docs/results.md,
"ViFi-CLIP from the stand-in, pixels only"): 1,500 clips each, uniform class prior, seeds the
training rendering (configs/vificlip/synthetic.py: seed 0, 96x72 and 128x96, 8-12 fps, 2-4 s,
plain backgrounds, no distractors) never uses::

  python benchmarks/render_vificlip_heldout.py          # about 4 minutes on 2 cores, once

- ``data_cache/vifi_heldout_geometry``: seed 12, frames 160x120, 80x80 and 144x96, 6 or 15 fps,
  3-4 s; plain backgrounds, no distractors (other sizes, aspect ratios, speeds and positions).
- ``data_cache/vifi_heldout_scene``: seed 11, the training frame sizes and rates, every background
  kind and up to two still distractor objects (scenes never trained on).

A folder already rendered with the same settings is left as it is.
"""

from __future__ import annotations

import argparse


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", default="data_cache")
  p.add_argument("--workers", type=int, default=1)
  args = p.parse_args()
  from t5video.data import synthetic  # pylint: disable=g-import-not-at-top
  common = dict(num_videos=1500, class_prior="uniform", workers=args.workers)
  synthetic.render_dataset(f"{args.root}/vifi_heldout_geometry", seed=12, sizes=((160, 120), (80, 80), (144, 96)),
                           fps_choices=(6, 15), min_seconds=3.0, max_seconds=4.0, backgrounds=("plain",),
                           max_distractors=0, **common)
  synthetic.render_dataset(f"{args.root}/vifi_heldout_scene", seed=11, sizes=((96, 72), (128, 96)),
                           max_distractors=2, **common)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
