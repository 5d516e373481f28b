r"""Pseudo-labelling: K nucleus-sampled captions per unlabelled clip from a trained CaptionT5.

The distillation recipe's stage (b) (:mod:`t5video.recipes.distill`), also a
command of its own::

  python -m t5video.recipes.distill.pseudo_label --teacher runs/captioner \
      --videos my_videos/annotations.jsonl --out data_cache/my_videos_pseudo --num-captions 4

What it writes into the output folder, a dataset in the generic layout
(:func:`t5video.data.layouts.read_generic` reads it; paths are absolute)::

  annotations.jsonl  one row per clip that decoded, in the input's order: the input row
                     (subtitle, metadata, ...) with ``captions`` = the K samples in the
                     order drawn (repeats kept: they are draws from the teacher) and
                     ``pseudo_logprobs`` = their length-normalised log-probabilities
  manifest.json      the teacher's identity (workdir, checkpoint, sha256 of its config.json,
                     tokenizer, thoughts), the sampling settings, the input, counts, the
                     clips that did not decode, and throughput (clips/s)
  parts/             part-NNNNN.jsonl, one per chunk of ``chunk_size`` clips (kept)
  plan.json          the settings and the clip ids this folder was started with
  final_metrics.json written last (the stage driver's "done")

Resumable: the clips are cut into fixed chunks, each written atomically when
finished; a restarted job skips the chunks it has. Every clip's captions are
drawn with its own key, ``fold_in(PRNGKey(seed), hash(video_id))`` and
``fold_in(·, k)`` for sample ``k`` (:func:`t5video.evaluate.decoding.sample`
with per-row keys), so they do not depend on the clip's batch-mates, and a
killed and restarted job writes the same captions as one that ran through.
A folder started with other settings (teacher, K, top-p, temperature, seed,
chunking, clips) is an error rather than a mixture.

Sharded across hosts: in a job of ``P`` processes, process ``p`` labels the
chunks ``i`` with ``i % P == p`` (chunks are independent of ``P``, so a job
restarted on another number of hosts reuses every finished chunk); process 0
merges the parts once all are written. Throughput is printed per chunk and at
the end (clips/s over every process).

Which thoughts the teacher reads (metadata, subtitle, its own draft) are those
it was trained and evaluated with (its ``thoughts`` and ``eval.refine``): the
captions are drawn conditioned on the same encoder input as its evaluation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t5video.data.records import VideoRecord
from t5video.recipes.distill import data as data_lib
from t5video.train import paths
from t5video.train import workdir as workdir_lib

VERSION = 1
PARTS = "parts"


def _id_hash(video_id: str) -> int:
  """A 31-bit hash of a clip id (md5): what its sampling key is folded with."""
  return int(hashlib.md5(video_id.encode("utf-8")).hexdigest()[:8], 16) & 0x7FFFFFFF


def clip_keys(video_ids: Sequence[str], seed: int) -> jax.Array:
  """``[N, 2]`` raw PRNG keys, one per clip: ``fold_in(PRNGKey(seed), hash(video_id))``."""
  base = jax.random.PRNGKey(int(seed))
  hashes = jnp.asarray([_id_hash(v) for v in video_ids], jnp.uint32)
  return jax.vmap(lambda h: jax.random.fold_in(base, h))(hashes)


def restore_teacher(workdir: str):
  """``(task, params)``: the CaptionT5 run in ``workdir`` and its latest params (host numpy)."""
  from t5video.recipes.captiont5.task import restore_run  # pylint: disable=g-import-not-at-top
  return restore_run(workdir)


def teacher_identity(task, workdir: str) -> dict[str, Any]:
  """What identifies a teacher: its workdir, checkpoint step, config hash, tokenizer, thoughts."""
  workdir = paths.normalize(workdir)
  cfg_text = paths.read_text(paths.join(workdir, "config.json"))
  step = None
  done = workdir_lib.final_metrics_path(workdir)
  if paths.exists(done):
    step = json.loads(paths.read_text(done)).get("step")
  c = task.config
  return {"workdir": workdir, "task": c.task, "step": step,
          "config_sha256": hashlib.sha256(cfg_text.encode("utf-8")).hexdigest(),
          "tokenizer": c.text.tokenizer or c.model.t5_init, "thoughts": list(c.thoughts.sources),
          "refine": bool(c.eval.refine), "num_frames": int(c.data.num_frames), "size": int(c.data.size),
          "max_target_len": int(c.text.max_target_len)}


class Sampler:
  """Draws K captions per clip with a CaptionT5 teacher (host-side; jitted inside)."""

  def __init__(self, task, params, *, num_captions: int, top_p: float, temperature: float, seed: int):
    self.task, self.params = task, params
    self.k, self.top_p, self.temperature, self.seed = int(num_captions), float(top_p), float(temperature), int(seed)

  def _encode(self, batch: dict, drafts: Optional[list[str]] = None):
    t = self.task
    visual = {k: np.asarray(batch[k]) for k in ("frames", "features") if k in batch}
    ids, mask = t._encoder_inputs(batch, "caption", drafts)  # pylint: disable=protected-access
    return t._jitted["encode"](self.params, visual, jnp.asarray(batch["frame_mask"], jnp.int32),  # pylint: disable=protected-access
                               jnp.asarray(ids), jnp.asarray(mask))

  def batch(self, batch: dict) -> tuple[list[list[str]], np.ndarray]:
    """``(captions [B][K], logprobs [B, K])`` of one decoded batch (padding rows included)."""
    t, j = self.task, self.task._jitted  # pylint: disable=protected-access
    hidden, mask = self._encode(batch)
    if "draft" in t.thought_cfg.sources and t.config.eval.refine:  # as the teacher is evaluated
      toks, _ = j["greedy"](self.params, hidden, mask)
      hidden, mask = self._encode(batch, t.tokenizer.decode_batch(np.asarray(toks)))
    keys = clip_keys([str(v) for v in batch["video_id"]], self.seed)
    toks, scores = j["sample"](self.params, hidden, mask, keys, self.k, self.top_p, self.temperature)
    toks, scores = np.asarray(toks), np.asarray(scores)  # [B, K, L], [B, K]
    return [t.tokenizer.decode_batch(row) for row in toks], scores

  def chunk(self, records: Sequence[VideoRecord], batch_size: int) -> list[dict]:
    """One output row per record: ``{video_id, captions, pseudo_logprobs}`` or ``{video_id, failure}``."""
    rows: dict[str, dict] = {}
    for batch in self.task._eval_loader(list(records), batch_size):  # pylint: disable=protected-access
      caps, scores = self.batch(batch)
      for i in range(len(batch["video_id"])):
        if int(batch["index"][i]) < 0:
          continue  # padding slot
        vid = str(batch["video_id"][i])
        if not bool(batch["valid"][i]):
          rows[vid] = {"video_id": vid, "failure": str(batch["failure"][i] or "undecodable")}
        else:
          rows[vid] = {"video_id": vid, "captions": list(caps[i]),
                       "pseudo_logprobs": [round(float(s), 5) for s in scores[i]]}
    return [rows.get(r.video_id, {"video_id": r.video_id, "failure": "not returned by the loader"})
            for r in records]


def _plan(records: Sequence[VideoRecord], settings: dict, chunk_size: int) -> dict:
  ids = [r.video_id for r in records]
  if len(set(ids)) != len(ids):
    dup = sorted({v for v in ids if ids.count(v) > 1})[:3]
    raise ValueError(f"pseudo-labelling needs unique clip ids; repeated: {dup}")
  return {"version": VERSION, "settings": settings, "chunk_size": int(chunk_size),
          "num_chunks": -(-len(ids) // int(chunk_size)),
          "clips_sha256": hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest(), "num_clips": len(ids)}


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def label(task, params, records: Sequence[VideoRecord], out_dir: str, *, teacher: dict,
          num_captions: int = 4, top_p: float = 0.9, temperature: float = 1.0, seed: int = 0,
          batch_size: int = 16, chunk_size: int = 64, source: str = "",
          log=print) -> dict[str, Any]:
  """Pseudo-labels ``records`` into ``out_dir`` (see the module docstring); returns the manifest.

  Args:
    task, params: a CaptionT5 task and its params (:func:`restore_teacher`).
    records: the clips to label, in order (their captions, if any, are ignored).
    out_dir: the output folder (local).
    teacher: :func:`teacher_identity`, recorded and checked on restart.
    num_captions, top_p, temperature, seed: the sampling settings.
    batch_size: clips decoded and sampled at a time.
    chunk_size: clips per resumable part.
    source: what ``records`` came from (recorded).
  """
  settings = {"num_captions": int(num_captions), "top_p": float(top_p), "temperature": float(temperature),
              "seed": int(seed), "teacher_config_sha256": teacher["config_sha256"],
              "teacher_step": teacher.get("step")}
  plan = _plan(records, settings, chunk_size)
  parts_dir = os.path.join(out_dir, PARTS)
  plan_path = os.path.join(out_dir, "plan.json")
  os.makedirs(parts_dir, exist_ok=True)  # every process (a host's own disk needs it too)
  if jax.process_index() == 0:
    if os.path.isfile(plan_path):
      old = json.loads(paths.read_text(plan_path))
      if old != plan:
        differ = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        raise ValueError(f"{out_dir}: a pseudo-labelling job with other settings was started here "
                         f"(differing: {differ}); remove the folder or choose another")
    else:
      paths.write_text(plan_path, json.dumps(plan, indent=2))
  _barrier(f"pseudo-label plan {out_dir}")

  sampler = Sampler(task, params, num_captions=num_captions, top_p=top_p, temperature=temperature, seed=seed)
  n, cs = plan["num_chunks"], int(chunk_size)
  mine = [i for i in range(n) if i % jax.process_count() == jax.process_index()]
  done_clips, t0 = 0, time.perf_counter()
  for i in mine:
    part = os.path.join(parts_dir, f"part-{i:05d}.jsonl")
    if os.path.isfile(part):
      continue
    chunk = list(records[i * cs:(i + 1) * cs])
    t = time.perf_counter()
    rows = sampler.chunk(chunk, int(batch_size))
    data_lib.write_jsonl(part, rows)  # atomic: a killed job leaves no half part
    dt = time.perf_counter() - t
    done_clips += len(chunk)
    log(f"pseudo-label part {i + 1}/{n}: {len(chunk)} clips in {dt:.1f} s ({len(chunk) / max(dt, 1e-9):.2f} "
        f"clips/s, {num_captions} captions each)")
  elapsed = time.perf_counter() - t0
  paths.write_text(os.path.join(parts_dir, f"throughput-p{jax.process_index()}.json"),
                   json.dumps({"clips": done_clips, "seconds": elapsed}))
  _barrier(f"pseudo-label parts {out_dir}")

  manifest: dict[str, Any] = {}
  if jax.process_index() == 0:
    manifest = _merge(records, out_dir, plan, teacher, settings, source)
    log(f"pseudo-labelled {manifest['counts']['labelled']} clips ({manifest['counts']['failed']} did not decode) "
        f"into {out_dir}: {manifest['throughput']['clips_per_s']:.2f} clips/s over "
        f"{manifest['throughput']['processes']} process(es) this run")
  _barrier(f"pseudo-label merged {out_dir}")
  if not manifest:
    manifest = json.loads(paths.read_text(os.path.join(out_dir, "manifest.json")))
  return manifest


def _merge(records, out_dir, plan, teacher, settings, source) -> dict[str, Any]:
  parts_dir = os.path.join(out_dir, PARTS)
  by_id: dict[str, dict] = {}
  for i in range(plan["num_chunks"]):
    part = os.path.join(parts_dir, f"part-{i:05d}.jsonl")
    if not os.path.isfile(part):
      raise RuntimeError(f"{part}: missing after every process finished (was a process killed?); run again")
    for line in paths.read_text(part).splitlines():
      if line.strip():
        row = json.loads(line)
        by_id[row["video_id"]] = row
  out, failed = [], []
  for r in records:
    got = by_id[r.video_id]
    if "failure" in got:
      failed.append({"video_id": r.video_id, "path": r.path, "failure": got["failure"]})
      continue
    out.append(data_lib.record_row(r, unlabelled=True, split="train", captions=got["captions"],
                                   pseudo_logprobs=got["pseudo_logprobs"]))
  data_lib.write_jsonl(os.path.join(out_dir, data_lib.PSEUDO), out)
  clips, seconds, processes = 0, 0.0, 0
  for name in sorted(os.listdir(parts_dir)):
    if name.startswith("throughput-p"):
      t = json.loads(paths.read_text(os.path.join(parts_dir, name)))
      clips, seconds, processes = clips + t["clips"], max(seconds, t["seconds"]), processes + 1
  manifest = {
      "version": VERSION, "teacher": teacher,
      "sampling": {"method": "nucleus", **{k: settings[k] for k in ("num_captions", "top_p", "temperature", "seed")},
                   "key": "fold_in(fold_in(PRNGKey(seed), md5(video_id)[:8] & 0x7fffffff), sample)",
                   "max_len": teacher.get("max_target_len")},
      "source": source, "layout": "generic", "annotations": data_lib.PSEUDO,
      "counts": {"clips": len(records), "labelled": len(out), "failed": len(failed),
                 "captions": sum(len(r["captions"]) for r in out)},
      "failed": failed[:1000],
      "throughput": {"clips_this_run": clips, "seconds": round(seconds, 3), "processes": processes,
                     "clips_per_s": clips / seconds if seconds > 0 else 0.0},
  }
  paths.write_text(os.path.join(out_dir, "manifest.json"), json.dumps(manifest, indent=2))
  return manifest


# =============================================================================
# The stage and the command line
# =============================================================================

def run_stage(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The distill pipeline's pseudo-labelling stage (a ``run`` stage, :mod:`t5video.train.stages`).

  ``config`` is the distill run's resolved config: the teacher is
  ``teacher.workdir``, the clips ``<student.data_dir>/unlabelled.jsonl``, the
  settings ``pseudo.*``; the dataset goes into ``workdir`` (= ``pseudo.dir``).
  """
  p = config.pseudo
  workdir = paths.normalize(workdir)
  source = os.path.join(config.student.data_dir, data_lib.UNLABELLED)
  records = data_lib.read(source)
  if p.max_clips:
    records = records[: int(p.max_clips)]
  if not records:
    raise ValueError(f"{source}: no unlabelled clips to pseudo-label")
  task, params = restore_teacher(config.teacher.workdir)
  manifest = label(task, params, records, workdir, teacher=teacher_identity(task, config.teacher.workdir),
                   num_captions=p.num_captions, top_p=p.top_p, temperature=p.temperature, seed=p.seed,
                   batch_size=p.batch_size, chunk_size=p.chunk_size, source=source)
  result = {"step": 0, "preempted": False,
            "eval": {"pseudo_clips": float(manifest["counts"]["labelled"]),
                     "pseudo_failed": float(manifest["counts"]["failed"]),
                     "pseudo_clips_per_s": float(manifest["throughput"]["clips_per_s"])}}
  if jax.process_index() == 0:
    paths.write_text(workdir_lib.final_metrics_path(workdir), json.dumps(result, indent=2))
  _barrier(f"pseudo-label done {workdir}")
  return result


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m t5video.recipes.distill.pseudo_label",
                              description="K nucleus-sampled captions per clip from a trained CaptionT5 run, "
                                          "written as a generic-layout dataset (resumable).")
  p.add_argument("--teacher", required=True, help="a trained CaptionT5 workdir")
  p.add_argument("--videos", required=True, help="a generic-layout annotation file (.jsonl/.csv) of the clips")
  p.add_argument("--split", default="", help="only this split of --videos ('' = every row)")
  p.add_argument("--out", required=True, help="the output folder (a finished or half-done one resumes)")
  p.add_argument("--num-captions", type=int, default=4)
  p.add_argument("--top-p", type=float, default=0.9)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--chunk-size", type=int, default=64)
  p.add_argument("--max-clips", type=int, default=0)
  args = p.parse_args(argv)
  records = data_lib.read(args.videos, args.split or None)
  if args.max_clips:
    records = records[: args.max_clips]
  if not records:
    raise SystemExit(f"{args.videos}: no clips{' in split ' + args.split if args.split else ''}")
  task, params = restore_teacher(args.teacher)
  label(task, params, records, os.path.abspath(args.out), teacher=teacher_identity(task, args.teacher),
        num_captions=args.num_captions, top_p=args.top_p, temperature=args.temperature, seed=args.seed,
        batch_size=args.batch_size, chunk_size=args.chunk_size, source=os.path.abspath(args.videos))
  return 0


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  sys.exit(main())
