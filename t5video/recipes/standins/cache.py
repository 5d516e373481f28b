"""Build the stand-ins once, cache them, and copy them where they are asked for.

``build(config)`` returns ``<cache>/<key>/`` holding::

  clip/           HF CLIPModel: config.json, model.safetensors, CLIP BPE tokenizer
                  (tokenizer.json, vocab.json, merges.txt), preprocessor_config.json
  t5/             HF T5ForConditionalGeneration: config.json, model.safetensors,
                  spiece.model + tokenizer.json (T5Tokenizer, 100 sentinels)
  standins.json   what was measured (zero-shot, held-out loss, controls), timings, config

``<key>`` hashes the config and the build and generator versions
(:func:`.config.cache_key`); a finished directory is returned at once. A build
is written into a temporary sibling and renamed when complete, under a file
lock, so a killed build leaves nothing that looks finished and two processes
asking at once build it once.

Command line (``t5video standins`` calls :func:`main`)::

  t5video standins --out DIR [--config configs/standins/default.py[:tiny]] [--config.KEY=VALUE ...]
                   [--rebuild]
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import resource
import shutil
import string
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

import ml_collections
import numpy as np

from t5video.recipes.standins import config as config_lib
from t5video.recipes.standins import data as data_lib

RESULT_NAME = "standins.json"
PARTS = ("clip", "t5", RESULT_NAME)


def is_complete(path: str) -> bool:
  """Whether ``path`` holds a finished build (both model directories and the results)."""
  return (os.path.isfile(os.path.join(path, RESULT_NAME))
          and all(os.path.isfile(os.path.join(path, p, f)) for p in ("clip", "t5")
                  for f in ("config.json", "model.safetensors")))


@contextlib.contextmanager
def _lock(path: str):
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def build(config: ml_collections.ConfigDict, *, rebuild: bool = False,
          log: Callable[[str], None] = print) -> str:
  """Returns the cache directory of ``config``'s stand-ins, building them first if needed."""
  config_lib.validate(config)
  root = config_lib.cache_root(config)
  final = os.path.join(root, config_lib.cache_key(config))
  if is_complete(final) and not rebuild:
    return final
  os.makedirs(root, exist_ok=True)
  with _lock(final + ".lock"):
    if is_complete(final) and not rebuild:  # built by another process while we waited
      return final
    tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".tmp-", dir=root)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished cache is an ordinary folder
    try:
      _build_into(config, tmp, log)
      if os.path.exists(final):
        shutil.rmtree(final)
      os.replace(tmp, final)
    finally:
      if os.path.exists(tmp):
        shutil.rmtree(tmp)
  return final


PREFIX = "standins:"


def resolve(spec: str, part: str, *, log: Callable[[str], None] = print) -> str:
  """A checkpoint setting as a directory: ``'standins:CONFIG.py[:ARG]'`` is ``part`` ('clip'
  or 't5') of the stand-ins that config builds (built here on first use, then cached: see
  :func:`build`); anything else is returned as it is (an HF directory, or empty)."""
  if not spec.startswith(PREFIX):
    return spec
  if part not in PARTS or part.endswith(".json"):
    raise ValueError(f"stand-in part must be 'clip' or 't5', got {part!r}")
  from t5video import config as run_config  # pylint: disable=g-import-not-at-top
  return os.path.join(build(run_config.load_config_file(spec[len(PREFIX):]), log=log), part)


def write_out(cache: str, out: str) -> str:
  """Copies ``clip/``, ``t5/`` and ``standins.json`` of ``cache`` into ``out`` (replacing them)."""
  if os.path.realpath(cache) == os.path.realpath(out):
    return out
  os.makedirs(out, exist_ok=True)
  for name in PARTS:
    src, dst = os.path.join(cache, name), os.path.join(out, name)
    if os.path.isdir(dst) and not os.path.islink(dst):
      shutil.rmtree(dst)
    elif os.path.lexists(dst):
      os.remove(dst)
    if os.path.isdir(src):
      shutil.copytree(src, dst)
    else:
      shutil.copy2(src, dst)
  return out


def read_results(path: str) -> dict:
  with open(os.path.join(path, RESULT_NAME)) as f:
    return json.load(f)


# =============================================================================
# The build
# =============================================================================

def _load() -> Optional[list[float]]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def _cpu_seconds() -> float:
  """CPU time of this process and its finished children (the still-rendering workers)."""
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Clock:
  """Wall and CPU seconds per phase of the build."""

  def __init__(self):
    self.wall: dict[str, float] = {}
    self.cpu: dict[str, float] = {}

  @contextlib.contextmanager
  def phase(self, name: str):
    wall, cpu = time.perf_counter(), _cpu_seconds()
    yield
    self.wall[name] = round(time.perf_counter() - wall, 1)
    self.cpu[name] = round(_cpu_seconds() - cpu, 1)


class _Inline:
  """The executor interface run in this process, each job when its result is asked for."""

  class _Job:
    def __init__(self, fn, args, kwargs):
      self._call, self._done, self._value = (fn, args, kwargs), False, None

    def result(self):
      if not self._done:
        fn, args, kwargs = self._call
        self._value, self._done = fn(*args, **kwargs), True
      return self._value

  def submit(self, fn, *args, **kwargs):
    return self._Job(fn, args, kwargs)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def _executor(workers: int):
  """``workers`` spawned processes (no JAX in them), or in this process when 0."""
  if workers <= 0:
    return _Inline()
  import multiprocessing  # pylint: disable=g-import-not-at-top
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  return futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _clip_preprocessor(size: int) -> dict:
  """``preprocessor_config.json`` of a CLIPImageProcessor for ``size`` squares (CLIP's mean/std)."""
  from t5video.models.clip import CLIP_MEAN, CLIP_STD  # pylint: disable=g-import-not-at-top
  return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
          "resample": 3, "do_center_crop": True, "crop_size": {"height": size, "width": size},
          "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
          "image_std": list(CLIP_STD), "do_convert_rgb": True}


def _gather(jobs) -> tuple[list, np.ndarray]:
  """The stills and pixels of chunk jobs, in order."""
  stills, pixels = [], []
  for job in jobs:
    s, p = job.result()
    stills += s
    pixels.append(p)
  return stills, np.concatenate(pixels)


def _build_clip(config, out: str, jobs: dict, clock: _Clock, log) -> dict:
  from t5video.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from t5video.models import hf  # pylint: disable=g-import-not-at-top
  from t5video.recipes.standins import evaluate, pretrain  # pylint: disable=g-import-not-at-top
  s, c = config.stills, config.clip
  seed = int(config.seed)
  with clock.phase("stills_wait"):
    stills, pixels = _gather(jobs["train"])
    heldout, heldout_pixels = _gather(jobs["heldout"])
    captions = data_lib.still_captions(stills, int(s.captions_per_still), data_lib.derived_seed(seed, "captions"))
  log(f"clip: {len(stills)} training and {len(heldout)} held-out stills; e.g. {captions[0][0]!r}")

  with clock.phase("clip_train"):
    clip_dir = os.path.join(out, "clip")
    text_len = int(c.text.max_position_embeddings)
    flat = [cap for caps in captions for cap in caps]
    tokenizer_lib.train_clip_bpe(flat, clip_dir, int(c.bpe_vocab), model_max_length=text_len)
    tok = tokenizer_lib.ClipTextTokenizer(clip_dir)
    ids, mask = tok(flat, text_len)
    k = int(s.captions_per_still)
    ids, mask = ids.reshape(len(stills), k, text_len), mask.reshape(len(stills), k, text_len)
    truncated = float(np.mean(mask[..., -1] == 1))
    model = pretrain.clip_model(config, tok.text_overrides())
    init_params, params, history = pretrain.train_clip(
        config, model, pixels, ids, mask, seed=data_lib.derived_seed(seed, "clip"), log=log)

  with clock.phase("clip_eval_export"):
    encoders = evaluate.ClipEncoders(model, tok, text_len=text_len, batch_size=int(config.eval.batch_size),
                                     fast_compile=bool(config.xla_fast_compile))
    kwargs = dict(templates=dict(config.eval.templates), max_objects=1 + int(s.max_distractors))
    zero_shot = evaluate.zero_shot(encoders, params, heldout_pixels, heldout, **kwargs)
    untrained = evaluate.zero_shot(encoders, init_params, heldout_pixels, heldout, **kwargs)
    for name, r in zero_shot.items():
      r["untrained"] = untrained[name]["top1"]
    hf.export_hf(model, params, clip_dir)
    with open(os.path.join(clip_dir, "preprocessor_config.json"), "w") as f:
      json.dump(_clip_preprocessor(int(s.size)), f, indent=2)
  return {"zero_shot": zero_shot, "history": history, "train_stills": len(stills),
          "heldout_stills": len(heldout),
          "heldout_single_object": int(sum(len(h.objects) == 1 for h in heldout)),
          "tokenizer_vocab": tok.vocab_size, "captions_truncated": round(truncated, 4),
          "example_captions": captions[0]}


def _build_t5(config, out: str, jobs: dict, clock: _Clock, log) -> dict:
  from t5video.data import synthetic  # pylint: disable=g-import-not-at-top
  from t5video.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from t5video.models import hf  # pylint: disable=g-import-not-at-top
  from t5video.models import t5 as t5_lib  # pylint: disable=g-import-not-at-top
  from t5video.recipes.standins import evaluate, pretrain  # pylint: disable=g-import-not-at-top
  tx, c = config.text, config.t5
  seed = int(config.seed)
  with clock.phase("text"):
    texts = data_lib.clip_texts(int(tx.num_clips), data_lib.derived_seed(seed, "train_text"))
    heldout_texts = data_lib.clip_texts(int(tx.heldout_clips), data_lib.derived_seed(seed, "heldout_text"))
    texts += jobs["still_texts"].result()
    t5_dir = os.path.join(out, "t5")
    os.makedirs(t5_dir)
    # Every printable character, so text outside the corpus (prompts, digits) is never <unk>.
    charset = " ".join(ch for ch in string.printable if not ch.isspace())
    spiece = tokenizer_lib.train_sentencepiece(texts + synthetic.concepts() + [charset],
                                               os.path.join(out, "spiece.model"), int(tx.vocab_size))
    hf_tok = tokenizer_lib.save_t5_tokenizer(spiece.model_file, t5_dir, int(tx.extra_ids))
    os.remove(spiece.model_file)
    sp = tokenizer_lib.SentencePieceTokenizer(os.path.join(t5_dir, "spiece.model"))
    sentinels = hf_tok.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(int(tx.extra_ids))])
    raw = int(c.raw_length)
    spans = max(round(round(raw * float(c.noise_density)) / float(c.mean_noise_span_length)), 1)
    if spans > len(sentinels):
      raise ValueError(f"t5.raw_length={raw} makes {spans} noise spans, more than text.extra_ids={len(sentinels)}")
    chunks = data_lib.pack([sp.encode(x) for x in texts], raw)
    heldout_chunks = data_lib.pack([sp.encode(x) for x in heldout_texts], raw)
    corrupt_kwargs = dict(noise_density=float(c.noise_density),
                          mean_noise_span_length=float(c.mean_noise_span_length),
                          sentinels=sentinels, eos_id=sp.eos_id)
    corruption_seed = data_lib.derived_seed(seed, "corruption")

    def corrupt(epoch: int):
      return data_lib.span_corruption(chunks, seed=corruption_seed + epoch, **corrupt_kwargs)

  log(f"t5: {len(texts)} training texts ({chunks.size} tokens, {len(chunks)} chunks of {raw}), "
      f"{len(heldout_texts)} held-out texts; SentencePiece {sp.vocab_size} pieces + {len(sentinels)} sentinels")

  with clock.phase("t5_train"):
    model = t5_lib.T5ForConditionalGeneration(pretrain.t5_config(config, len(hf_tok), pretraining=True))
    init_params, params, history = pretrain.train_t5(config, model, corrupt, seed=data_lib.derived_seed(seed, "t5"),
                                                     log=log)

  with clock.phase("t5_eval_export"):
    h_inputs, h_targets = data_lib.span_corruption(
        heldout_chunks, seed=data_lib.derived_seed(seed, "heldout_corruption"), **corrupt_kwargs)
    heldout_loss = evaluate.HeldoutLoss(model, h_inputs, h_targets, int(config.eval.batch_size),
                                        fast_compile=bool(config.xla_fast_compile))
    result = {
        "heldout_loss": round(heldout_loss(params), 4),
        "untrained_loss": round(heldout_loss(init_params), 4),
        "unigram_loss": round(evaluate.unigram_loss(corrupt(0)[1], h_targets), 4),
        "uniform_loss": round(evaluate.chance_loss(len(hf_tok)), 4),
        "heldout_examples": int(len(h_inputs)), "input_length": int(h_inputs.shape[1]),
        "target_length": int(h_targets.shape[1]), "train_chunks": int(len(chunks)),
        "train_tokens": int(chunks.size), "tokenizer_vocab": len(hf_tok), "model_vocab": model.config.vocab_size,
        "history": history,
        "example": {"inputs": hf_tok.decode(h_inputs[0].tolist()), "targets": hf_tok.decode(h_targets[0].tolist())},
    }
    export = t5_lib.T5ForConditionalGeneration(pretrain.t5_config(config, len(hf_tok), pretraining=False))
    hf.export_hf(export, params, t5_dir)
  return result


def _submit_stills(config, pool) -> dict:
  """Queues the still chunks (training, held-out) and the still captions of the T5 corpus."""
  s, seed = config.stills, int(config.seed)
  common = dict(size=int(s.size), backgrounds=tuple(s.backgrounds), max_distractors=int(s.max_distractors))
  jobs = {"still_texts": pool.submit(data_lib.still_texts, int(config.text.still_captions),
                                     data_lib.derived_seed(seed, "text_stills"),
                                     data_lib.derived_seed(seed, "captions"), **common)}
  for split, num in (("train", int(s.num_train)), ("heldout", int(s.num_heldout))):
    twins = split == "train" and bool(s.twins)
    jobs[split] = [pool.submit(data_lib.rendered_chunk, n, chunk_seed, twins=twins, **common)
                   for n, chunk_seed in data_lib.chunk_seeds(num, data_lib.derived_seed(seed, f"{split}_stills"))]
  return jobs


def _build_into(config: ml_collections.ConfigDict, out: str, log) -> None:
  """The T5 first, while worker processes render the stills; then the CLIP."""
  t0, cpu0 = time.perf_counter(), _cpu_seconds()
  load_before = _load()
  clock = _Clock()
  with _executor(int(config.stills.workers)) as pool:
    jobs = _submit_stills(config, pool)
    t5 = _build_t5(config, out, jobs, clock, log)
    clip = _build_clip(config, out, jobs, clock, log)
  seconds = round(time.perf_counter() - t0, 1)
  result = {
      "key": config_lib.cache_key(config), "build_version": config_lib.BUILD_VERSION,
      "seconds": seconds, "cpu_seconds": round(_cpu_seconds() - cpu0, 1),
      "timings": clock.wall, "cpu_timings": clock.cpu,
      "machine": {"cpus": os.cpu_count(), "load_before": load_before, "load_after": _load(),
                  "python": platform.python_version()},
      "clip": clip, "t5": t5, "config": json.loads(config.to_json_best_effort()),
  }
  with open(os.path.join(out, RESULT_NAME), "w") as f:
    json.dump(result, f, indent=2)
  log(f"built in {seconds:.0f} s ({result['cpu_seconds']:.0f} CPU seconds; load average before "
      f"{load_before}, after {result['machine']['load_after']})")


# =============================================================================
# Command line
# =============================================================================

def summary(result: dict, where: str, *, cached: bool) -> str:
  """The lines the command prints: where, zero-shot accuracies, held-out loss."""
  lines = [f"stand-ins in {where} ({'cached' if cached else 'built'}; build took {result['seconds']:.0f} s)"]
  zs = result["clip"]["zero_shot"]
  lines.append(f"  CLIP zero-shot top-1 on held-out stills ({result['clip']['heldout_single_object']} with one "
               f"object; count: all {result['clip']['heldout_stills']}):")
  for name, r in zs.items():
    plain = f", plain backgrounds {r['plain_top1']:.3f}" if "plain_top1" in r else ""
    lines.append(f"    {name:<10} {r['top1']:.3f}  (chance {r['chance']:.3f}, majority {r['majority']:.3f}, "
                 f"untrained {r['untrained']:.3f}{plain}; prompt {r['prompt']!r})")
  t5 = result["t5"]
  lines.append(f"  T5 held-out span-corruption loss {t5['heldout_loss']:.3f} nats/token "
               f"(untrained {t5['untrained_loss']:.3f}, unigram {t5['unigram_loss']:.3f}, "
               f"uniform {t5['uniform_loss']:.3f}; {t5['heldout_examples']} examples)")
  return "\n".join(lines)


def _usage() -> str:
  return ("usage: t5video standins --out DIR [--config configs/standins/default.py[:tiny]] "
          "[--config.KEY=VALUE ...] [--rebuild]")


def _unknown_key(argv: Sequence[str], error: Exception) -> SystemExit:
  """One line naming the ``--config.KEY`` the schema lacks, and the nearest valid key."""
  from t5video import config as t5video_config  # pylint: disable=g-import-not-at-top
  for a in argv:
    if a.startswith("--config."):
      try:
        t5video_config.check_key(config_lib.base_config(), a[len("--config."):].split("=", 1)[0])
      except ValueError as bad:
        return SystemExit(f"t5video standins: invalid config flag {a.split('=', 1)[0]}: {bad}")
  return SystemExit(f"t5video standins: {' '.join(str(error).split())}")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``t5video standins --out DIR [--config FILE[:ARG]] [--config.KEY=VALUE ...] [--rebuild]``."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from t5video import config as t5video_config  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv[1:] if argv is None else argv)
  fv = flags.FlagValues()
  default = os.path.join(t5video_config.REPO, "configs", "standins", "default.py")
  try:  # the default file is read (with the --config.* overrides) when the flag is defined
    config_flags.DEFINE_config_file(
        "config", default if os.path.isfile(default) else None, "Config file path[:arg].", flag_values=fv,
        lock_config=True, sys_argv=["t5video standins"] + argv)
  except (AttributeError, KeyError) as e:
    raise _unknown_key(argv, e) from None
  flags.DEFINE_string("out", None, "Write DIR/clip, DIR/t5 and DIR/standins.json (copies of the cache).",
                      flag_values=fv)
  flags.DEFINE_boolean("rebuild", False, "Build again even when the cache holds this config.", flag_values=fv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv):
    print(_usage())
    print(fv.get_help())
    return 0
  try:
    rest = fv(["t5video standins"] + argv)
    config = fv.config if fv.config is not None else config_lib.base_config()
  except flags.Error as e:
    raise SystemExit(f"t5video standins: {e}")
  except (AttributeError, KeyError) as e:  # a --config.KEY the config does not have
    raise _unknown_key(argv, e) from None
  if len(rest) > 1:
    raise SystemExit(f"t5video standins: unexpected arguments {rest[1:]}")
  try:
    config_lib.validate(config)
  except ValueError as e:
    raise SystemExit(f"t5video standins: invalid config: {e}")
  cache = os.path.join(config_lib.cache_root(config), config_lib.cache_key(config))
  cached = is_complete(cache) and not fv.rebuild
  path = build(config, rebuild=fv.rebuild, log=lambda line: print(line, flush=True))
  where = write_out(path, fv.out) if fv.out else path
  print(summary(read_results(path), where, cached=cached))
  if fv.out:
    print(f"  cache: {path}")
  return 0
