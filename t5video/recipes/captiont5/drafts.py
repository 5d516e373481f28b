"""Self-refinement drafts that come from the model, never from the references.

With ``'draft'`` among ``thoughts.sources`` the encoder reads a first caption
("draft: ...") and writes a better one. At evaluation the draft is the model's
own first pass. In training it has to come from somewhere before the model
exists; ``thoughts.drafts.source`` says where:

* ``'model'`` (the default): an earlier checkpoint of this recipe. The run's
  prepare step adds two stages (:mod:`t5video.train.stages`) before the run
  itself: ``draft_model``, the run's own config trained for
  ``thoughts.drafts.num_steps`` steps without the draft thought, in
  ``<workdir>/draft_model``; and ``drafts``, which decodes every training clip
  with it (greedy, the thoughts it was trained with) into
  ``<workdir>/drafts/drafts.jsonl`` (``{"video_id", "draft"}`` per line). The
  run then trains with those drafts. The draft model is short on purpose: an
  early checkpoint's drafts on training clips have errors like the final
  model's first pass on new clips, which is what refinement has to repair.
* ``'corrupted_reference'``: a reference caption with words dropped or swapped
  (:func:`t5video.data.thoughts.corrupt_caption`). It puts the answer into the
  encoder input in training; kept, named so, for comparison only.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import ml_collections

from t5video.data.records import fraction_subset
from t5video.train import paths
from t5video.train import workdir as workdir_lib

DRAFT_MODEL = "draft_model"   # the stage that trains the draft model
DRAFTS = "drafts"             # the stage that decodes the training clips' drafts
FILE = "drafts.jsonl"


def uses_model_drafts(config: ml_collections.ConfigDict) -> bool:
  t = config.thoughts
  return "draft" in t.sources and t.drafts.source == "model"


def stages(config: ml_collections.ConfigDict, overrides: Optional[dict] = None) -> list[dict]:
  """The ``draft_model`` and ``drafts`` stage entries for a run of ``config``.

  ``overrides``: nested dicts the draft model's config takes on top (the recipe passes
  the video-text CLIP workdir it shares with the run).
  """
  t = config.thoughts
  num_steps = int(t.drafts.num_steps)
  model = {"stages": (),
           "thoughts": {"sources": tuple(s for s in t.sources if s != "draft")},
           "train": {"num_steps": num_steps,
                     "checkpoint_every": min(int(config.train.checkpoint_every), num_steps)},
           # its own evaluation is a quick check of the drafts, not a result
           "eval": {"controls": (), "refine": False, "max_examples": 32, "rerank": {"candidates": 0}}}
  for key, value in dict(overrides or {}).items():
    model[key] = {**model[key], **value} if isinstance(model.get(key), dict) else value
  return [{"name": DRAFT_MODEL, "config": "", "workdir": DRAFT_MODEL, "overrides": model},
          {"name": DRAFTS, "config": "", "workdir": DRAFTS, "overrides": {"stages": ()},
           "run": "t5video.recipes.captiont5.drafts:run_stage"}]


def drafts_file(workdir: str) -> str:
  return paths.join(workdir, DRAFTS, FILE)


def read(path: str) -> dict[str, str]:
  """``video_id -> draft`` from a drafts file."""
  out = {}
  for n, line in enumerate(paths.read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      out[str(row["video_id"])] = str(row["draft"])
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path}:{n}: not a draft row ({{'video_id', 'draft'}}): {e}") from e
  return out


def run_stage(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The ``drafts`` stage: decodes every training clip with the sibling ``draft_model`` run.

  ``config`` is the run's resolved config; ``workdir`` is ``<run>/drafts``. Every
  process decodes every clip (the training split of a CPU-sized run); process 0
  writes the file and ``final_metrics.json``. Started again after an interruption,
  it decodes again (it is one pass of greedy decoding).
  """
  from t5video.recipes.captiont5.task import restore_run  # pylint: disable=g-import-not-at-top
  workdir = paths.normalize(workdir)
  model_dir = paths.join(os.path.dirname(workdir.rstrip("/")), DRAFT_MODEL)
  task, params = restore_run(model_dir)
  d = config.data
  records = fraction_subset(task.records[d.train_split], d.train_fraction, config.seed)
  rows, failed = [], 0
  start = time.time()
  for batch in task._eval_loader(records, int(config.eval.batch_size), split=d.train_split):  # pylint: disable=protected-access
    caps = task.predict(params, batch, tasks=("caption",))["caption"]
    for i, vid in enumerate(batch["video_id"]):
      if int(batch["index"][i]) < 0:
        continue  # padding slot
      if not bool(batch["valid"][i]):
        failed += 1
        continue
      rows.append({"video_id": str(vid), "draft": caps[i]})
  seconds = time.time() - start
  result = {"step": 0, "preempted": False,
            "eval": {"draft_clips": float(len(rows)), "draft_failed": float(failed),
                     "draft_clips_per_s": len(rows) / max(seconds, 1e-9)}}
  print(f"drafts: {len(rows)} training clips decoded by {model_dir} ({failed} failed), "
        f"{result['eval']['draft_clips_per_s']:.1f} clips/s -> {paths.join(workdir, FILE)}", flush=True)
  if jax.process_index() == 0:
    paths.makedirs(workdir)
    paths.write_text(paths.join(workdir, FILE), "".join(json.dumps(r) + "\n" for r in rows))
    paths.write_text(workdir_lib.final_metrics_path(workdir), json.dumps(result, indent=2))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"drafts done {workdir}")
  return result
