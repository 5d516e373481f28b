"""The ``t5video`` command line.

  t5video train --config CONFIG.py[:ARG] [--config.KEY=VALUE ...] --workdir DIR
  t5video compile --config CONFIG.py[:ARG] [--config.KEY=VALUE ...] [--topology T[,T...]] [--json OUT]
                  [--search batch]   (the training steps compiled for TPU slices, on this machine;
                                      default: the slices the config names)
  t5video eval --workdir DIR [--config CONFIG.py[:ARG]] [--config.KEY=VALUE ...] [--split test] [--robustness]
  t5video caption --workdir DIR VIDEO [VIDEO ...]
  t5video zero-shot --workdir DIR --classes "a,b,c" VIDEO [VIDEO ...]
  t5video ground --workdir DIR --query "..." VIDEO [VIDEO ...]
  t5video data synthetic --out DIR --num-videos N --seed S
  t5video data charades-sta|tacos|tvsum|youtube-highlights --root DIR
                                               (their annotations into the QVHighlights layout)
  t5video standins --out DIR [--config configs/standins/default.py] [--config.KEY=VALUE ...]
  t5video extract-features ...   (see `t5video extract-features --help`)
  t5video convert --hf-dir DIR --out DIR
  t5video export-hf --ckpt DIR --out DIR [--tokenizer-from DIR]
  t5video report --workdir DIR

``train`` and ``eval`` take an ml_collections config file: ``--config`` names
it (``path.py:arg`` passes ``arg`` to its ``get_config``) and
``--config.a.b=value`` overrides one key; unknown keys and wrong types are
errors before anything heavy starts. ``eval`` without ``--config`` reads the
run's own ``config.json``, and ``--config.a.b=value`` overrides that (evaluating
a trained run on another dataset or rendering, for instance). Run ``t5video
COMMAND --help`` for a command's flags.

Bad input (a config key, an annotation, a path, a config too big for free
memory) ends in one line on stderr and exit code 1; ``--verbose`` (anywhere on
the command line, or ``T5VIDEO_VERBOSE=1``) shows the traceback instead.
Multi-host: with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` set (or on a multi-worker TPU VM), every device command
joins the JAX job before touching a device (docs/faults.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from typing import Optional, Sequence

COMMANDS = ("train", "compile", "eval", "caption", "zero-shot", "ground", "data", "standins", "extract-features", "convert",
            "export-hf", "report")


def _usage() -> str:
  return __doc__


# =============================================================================
# config-file commands (absl flags + ml_collections config_flags)
# =============================================================================

def _lists_as_tuples(config):
  """``config.json`` stores a config file's tuples as lists; as tuples again they take
  ``--config.KEY='(a, b)'`` overrides (ml_collections overrides no lists)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  def convert(value):
    if isinstance(value, (list, tuple)):
      return tuple(convert(v) for v in value)
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      return {k: convert(v) for k, v in value.items()}
    return value

  return ml_collections.ConfigDict(convert(config.to_dict()))


def _run_workdir_without_config(argv: Sequence[str]) -> Optional[str]:
  """``--workdir`` when ``argv`` has ``--config.KEY`` overrides but no ``--config`` and the
  workdir holds a run's config.json (the overrides then apply to that config); else None."""
  if any(a == "--config" or a.startswith("--config=") for a in argv):
    return None
  if not any(a.startswith("--config.") for a in argv):
    return None
  workdir = None
  for i, a in enumerate(argv):
    if a.startswith("--workdir="):
      workdir = a.split("=", 1)[1]
    elif a == "--workdir" and i + 1 < len(argv):
      workdir = argv[i + 1]
  from t5video.train import paths  # pylint: disable=g-import-not-at-top
  if not workdir or not paths.exists(paths.join(workdir, "config.json")):
    return None
  return workdir


def _parse_config_flags(argv: Sequence[str], command: str, *, config_required: bool):
  """Parses ``--config``, ``--config.*`` overrides and command flags with absl."""
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  sys_argv = [f"t5video {command}"] + list(argv)
  run_workdir = None if config_required else _run_workdir_without_config(argv)
  if run_workdir:
    # no --config: the finished run's config.json, which --config.KEY=VALUE overrides (e.g.
    # evaluating on another dataset: t5video eval --workdir W --config.data.root=D)
    run_config = _lists_as_tuples(load_run_config(run_workdir))
    try:  # the overrides apply here, as the flag is defined with its value
      config_flags.DEFINE_config_dict("config", run_config, "The run's config.json.", flag_values=fv,
                                      lock_config=True, sys_argv=sys_argv)
    except (AttributeError, KeyError) as e:  # a --config.KEY the run's config does not have
      _raise_unknown_flag(argv, command, e, run_config)
  else:
    # sys_argv: the overrides come from ``argv`` (cli.main called from Python), not sys.argv.
    config_flags.DEFINE_config_file("config", None, "Config file path[:arg].", flag_values=fv,
                                    lock_config=True, sys_argv=sys_argv)
  flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, metrics).", flag_values=fv)
  if command == "compile":
    flags.DEFINE_string("topology", None, "TPU slices, comma-separated: accelerator types (v4-32, v5p-16, "
                        "v5litepod-8, v6e-8), topologies (v5e:2x4) or N x either (2xv5litepod-256); "
                        "default: those the config names (its SLICES).", flag_values=fv)
    flags.DEFINE_string("json", "", "Write the records (a JSON list) to this file.", flag_values=fv)
    flags.DEFINE_enum("search", "", ["", "batch"], "batch: the largest global batch that fits.",
                      flag_values=fv)
    flags.DEFINE_list("steps", ["train", "eval"], "Which programs: train, eval (the recipe's "
                      "evaluation programs, each on one chip).", flag_values=fv)
  if command == "eval":
    flags.DEFINE_string("split", "", "Split to evaluate (default: config.data.eval_split).",
                        flag_values=fv)
    flags.DEFINE_boolean("robustness", False, "Also run frame-drop and noise sweeps.",
                         flag_values=fv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv):
    tail = "[--topology T[,T...]] [--json OUT] [--search batch]" if command == "compile" else "--workdir DIR"
    print(f"usage: t5video {command} --config CONFIG.py[:ARG] [--config.KEY=VALUE ...] {tail}")
    print(fv.get_help())
    raise SystemExit(0)
  try:
    rest = fv([f"t5video {command}"] + list(argv))
  except flags.Error as e:
    raise SystemExit(f"t5video {command}: {e}")
  except (AttributeError, KeyError) as e:  # a --config.KEY the config does not have
    _raise_unknown_flag(argv, command, e)
  if len(rest) > 1:
    raise SystemExit(f"t5video {command}: unexpected arguments {rest[1:]}")
  if command == "compile":
    pass  # --topology defaults to the config's SLICES (cmd_compile)
  elif not fv.workdir:
    raise SystemExit(f"t5video {command}: --workdir is required")
  config = fv.config
  if config is None:
    if config_required:
      raise SystemExit(f"t5video {command}: --config is required")
    config = load_run_config(fv.workdir)
  return config, fv


def _config_spec(argv: Sequence[str]) -> Optional[str]:
  """The ``--config`` value of ``argv`` (``path.py[:arg]``), or None."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv and argv.index("--config") + 1 < len(argv):
    spec = argv[argv.index("--config") + 1]
  return spec


def _raise_unknown_flag(argv: Sequence[str], command: str, error: Exception, config=None):
  """One line naming the unknown ``--config.KEY`` flag and the nearest valid key (of ``config``,
  or of the ``--config`` file)."""
  from t5video import config as config_lib
  spec = _config_spec(argv)
  if spec and config is None:
    config = config_lib.load_config_file(spec)
  if config is not None:
    for a in argv:
      if a.startswith("--config."):
        try:
          config_lib.check_key(config, a[len("--config."):].split("=", 1)[0])
        except ValueError as e:
          raise SystemExit(f"t5video {command}: invalid config flag {a.split('=', 1)[0]}: {e}")
  raise SystemExit(f"t5video {command}: {' '.join(str(error).split())}")


def load_config_file(spec: str):
  """``path.py[:arg]`` -> its ``get_config(arg)`` (:func:`t5video.config.load_config_file`)."""
  from t5video import config as config_lib
  return config_lib.load_config_file(spec)


def load_run_config(workdir: str):
  """The config a run in ``workdir`` trained with (:func:`t5video.config.load_run_config`)."""
  from t5video import config as config_lib
  try:
    return config_lib.load_run_config(workdir)
  except FileNotFoundError as e:
    raise SystemExit(str(e))


def save_run_config(config, workdir: str) -> None:
  """Writes ``workdir/config.json`` (:func:`t5video.config.save_run_config`)."""
  from t5video import config as config_lib
  config_lib.save_run_config(config, workdir)


def cmd_train(argv: Sequence[str]) -> int:
  config, fv = _parse_config_flags(argv, "train", config_required=True)
  from t5video import config as config_lib
  from t5video.train import stages
  from t5video.train import trainer
  try:
    config_lib.validate(config)
  except ValueError as e:
    raise SystemExit(f"t5video train: invalid config: {e}")
  try:
    result = stages.train(config, fv.workdir)
  except trainer.NonFiniteLossError as e:
    raise SystemExit(f"t5video train: {e}")
  if result.get("preempted"):
    where = f" in stage {result['stage']}" if result.get("stage") else ""
    print(f"{fv.workdir}: preempted at step {result['step']}{where}; run the same command again to resume")
  elif result.get("loss") is None and not result.get("eval"):
    print(f"{fv.workdir} is already at step {result['step']} = train.num_steps: nothing to do "
          f"(`t5video eval --workdir {fv.workdir}` re-evaluates it)")
  gc.collect()
  return 0


def cmd_compile(argv: Sequence[str]) -> int:
  config, fv = _parse_config_flags(argv, "compile", config_required=True)
  from t5video import config as config_lib
  from t5video.train import aot
  slices = [t for t in (fv.topology or "").split(",") if t.strip()]
  if not slices:
    spec = _config_spec(argv)
    slices = list(config_lib.config_slices(spec))
    if not slices:
      raise SystemExit(f"t5video compile: {spec} names no accelerator (it has no SLICES): pass --topology, "
                       "e.g. --topology v5litepod-8,v4-32")
  unknown = set(fv.steps) - {"train", "eval"}
  if unknown:
    raise SystemExit(f"t5video compile: --steps takes train and eval, got {sorted(unknown)}")
  records = aot.compile_config(config, slices, search=fv.search, steps=fv.steps)  # validates the config
  print(aot.table(records))
  if fv.json:
    os.makedirs(os.path.dirname(os.path.abspath(fv.json)), exist_ok=True)
    with open(fv.json, "w") as f:
      json.dump(records, f, indent=1, default=float)
    print(f"wrote {fv.json}")
  return 0


def restore_task(config, workdir: str):
  """Builds the run's Task and restores the latest params of ``workdir``.

  Params the checkpoint lacks (e.g. LoRA factors of a new run on a base run) keep their
  initial values.
  """
  import flax.linen as nn
  import jax
  from t5video.train import checkpoint as checkpoint_lib
  from t5video.train import paths
  from t5video.train import task as task_lib
  workdir = paths.normalize(workdir)  # Orbax (and sub-workdirs such as a CLIP stage) want absolute paths
  task = task_lib.get_task(config.task)(config)
  task.workdir = workdir
  params = jax.jit(lambda r: nn.unbox(task.init_params(r)))(jax.random.PRNGKey(0))
  params = checkpoint_lib.load_params_by_regex(params, workdir, ".*")
  return task, params


def cmd_eval(argv: Sequence[str]) -> int:
  config, fv = _parse_config_flags(argv, "eval", config_required=False)
  from t5video.train import task as task_lib
  from t5video.train import workdir as workdir_lib
  with workdir_lib.writer_lock(fv.workdir, "evaluation"):  # it writes eval_metrics.json and samples
    task_lib.get_task(config.task).prepare_eval_data(config)
    task, params = restore_task(config, fv.workdir)
    if fv.split:
      with config.unlocked():
        config.data.eval_split = fv.split
    metrics = task.evaluate(params, step=-1, workdir=fv.workdir)
    if fv.robustness and hasattr(task, "robustness"):
      curves = task.robustness(params, workdir=fv.workdir)
      metrics["robustness"] = curves
  print(json.dumps(metrics, indent=2, default=float))
  return 0


# =============================================================================
# argparse commands
# =============================================================================

def cmd_caption(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog="t5video caption",
                              description="Caption, classify and tag your own video files.")
  p.add_argument("--workdir", required=True, help="a trained CaptionT5 run directory")
  p.add_argument("videos", nargs="+", help="video files (mp4, webm, avi, mkv)")
  p.add_argument("--json", action="store_true", help="print one JSON object per video")
  args = p.parse_args(argv)
  config = load_run_config(args.workdir)
  task, params = restore_task(config, args.workdir)
  results = task.caption_files(params, args.videos)
  for r in results:
    if args.json:
      print(json.dumps(r))
    elif r.get("error"):
      print(f"{r['path']}: could not decode ({r['error']})")
    else:
      print(f"{r['path']}\n  caption: {r['caption']}\n  class:   {r['class']}"
            f"\n  tags:    {', '.join(r['tags'])}")
  return 0 if all(not r.get("error") for r in results) else 1


def cmd_zero_shot(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog="t5video zero-shot",
                              description="Class probabilities of your own videos from a ViFi-CLIP run.")
  p.add_argument("--workdir", required=True, help="a trained ViFi-CLIP run directory")
  p.add_argument("--classes", required=True, help='comma-separated class names, e.g. "a,b,c"')
  p.add_argument("videos", nargs="+")
  args = p.parse_args(argv)
  classes = [c.strip() for c in args.classes.split(",") if c.strip()]
  if len(classes) < 2:
    raise SystemExit("t5video zero-shot: --classes needs at least two names")
  if len(set(classes)) < len(classes):
    raise SystemExit(f"t5video zero-shot: --classes names a class twice: {classes}")
  missing = [v for v in args.videos if not os.path.isfile(v)]
  if missing:  # before restoring the model
    raise SystemExit(f"t5video zero-shot: no such video file: {', '.join(missing)}")
  from t5video.recipes import vificlip
  try:
    results = vificlip.zero_shot(args.workdir, classes, args.videos)
  except (FileNotFoundError, ValueError) as e:  # not a ViFi-CLIP workdir, undecodable videos
    raise SystemExit(f"t5video zero-shot: {e}")
  for path, probs in zip(args.videos, results):
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    print(path + "\n" + "\n".join(f"  {p:6.3f}  {c}" for c, p in ranked))
  return 0


def cmd_ground(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(
      prog="t5video ground",
      description="When does it happen? The top moments of a query in your own videos, from an "
                  "R2-Tuning run, and a saliency-curve PNG per video.")
  p.add_argument("--workdir", required=True, help="a trained R2-Tuning run directory")
  p.add_argument("--query", required=True, help='what to find, e.g. "the red square moves left"')
  p.add_argument("--top", type=int, default=5, help="moments to print per video")
  p.add_argument("--out", default=None, help="folder for the PNGs (default: WORKDIR/ground)")
  p.add_argument("--json", action="store_true", help="print one JSON object per video")
  p.add_argument("videos", nargs="+")
  args = p.parse_args(argv)
  missing = [v for v in args.videos if not os.path.isfile(v)]
  if missing:  # before restoring the model
    raise SystemExit(f"t5video ground: no such video file: {', '.join(missing)}")
  config = load_run_config(args.workdir)
  from t5video.train import task as task_lib
  if not hasattr(task_lib.get_task(config.task), "ground"):
    raise SystemExit(f"t5video ground: {args.workdir} is a {config.task!r} run; ground needs an "
                     "R2-Tuning run (configs/r2tuning/)")
  task, params = restore_task(config, args.workdir)
  results = task.ground(params, args.query, args.videos, top=args.top, out_dir=args.out,
                        log=(lambda line: None) if args.json else print)
  for r in results if args.json else ():
    print(json.dumps(r))
  return 0 if all(not r.get("error") for r in results) else 1


def cmd_data(argv: Sequence[str]) -> int:
  if not argv or argv[0] in ("-h", "--help"):
    print("usage: t5video data synthetic --out DIR --num-videos N --seed S\n"
          "       t5video data charades-sta|tacos|tvsum|youtube-highlights --root DIR [--out DIR] [--video-root DIR]"
          "   (into the QVHighlights layout)")
    return 0
  if argv[0] in ("charades-sta", "tacos", "tvsum", "youtube-highlights"):
    from t5video.data import grounding_formats, layouts
    try:
      return int(grounding_formats.main(argv[0], list(argv[1:])) or 0)
    except (FileNotFoundError, layouts.AnnotationError) as e:
      raise SystemExit(f"t5video data {argv[0]}: {e}")
  if argv[0] != "synthetic":
    raise SystemExit(f"t5video data: unknown subcommand {argv[0]!r} (known: synthetic, charades-sta, tacos, "
                     "tvsum, youtube-highlights)")
  from t5video.data import synthetic
  return int(synthetic.main(list(argv[1:])) or 0)


def cmd_standins(argv: Sequence[str]) -> int:
  """Pretrained CLIP and T5 stand-ins as HF directories (:mod:`t5video.recipes.standins`)."""
  from t5video.recipes import standins
  return int(standins.main(list(argv)) or 0)


def cmd_extract_features(argv: Sequence[str]) -> int:
  from t5video.data import features
  def resolve_clip(spec: str) -> str:  # standins:CONFIG: the stand-in CLIP (built once, cached)
    from t5video.recipes import standins
    return standins.resolve(spec, "clip")

  try:
    return int(features.main(list(argv), resolve_clip=resolve_clip) or 0)
  except (FileNotFoundError, ValueError) as e:  # missing dataset / checkpoint, --out of another run
    raise SystemExit(f"t5video extract-features: {e}")


def cmd_convert(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog="t5video convert",
                              description="Convert an HF CLIP/T5 directory to an Orbax checkpoint.")
  p.add_argument("--hf-dir", required=True)
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  from t5video.models import convert_io
  out = convert_io.convert_to_orbax(args.hf_dir, args.out)
  print(f"wrote {out}")
  return 0


def cmd_export_hf(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog="t5video export-hf",
                              description="Write a converted checkpoint back as an HF directory.")
  p.add_argument("--ckpt", required=True, help="a directory written by `t5video convert`")
  p.add_argument("--out", required=True)
  p.add_argument("--tokenizer-from", default=None, help="copy tokenizer files from this HF dir")
  args = p.parse_args(argv)
  from t5video.models import convert_io
  out = convert_io.export_from_orbax(args.ckpt, args.out, tokenizer_from=args.tokenizer_from)
  print(f"wrote {out}")
  return 0


def cmd_report(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog="t5video report", description="Plots of a run as PNG files.")
  p.add_argument("--workdir", required=True)
  args = p.parse_args(argv)
  from t5video.evaluate import report
  for path in report.write_report(args.workdir):
    print(f"wrote {path}")
  return 0


HANDLERS = {
    "train": cmd_train, "compile": cmd_compile, "eval": cmd_eval, "caption": cmd_caption, "zero-shot": cmd_zero_shot,
    "data": cmd_data, "standins": cmd_standins, "extract-features": cmd_extract_features, "convert": cmd_convert,
    "export-hf": cmd_export_hf, "report": cmd_report, "ground": cmd_ground,
}


# Commands that run JAX computations. On a multi-host job every process must join
# it (jax.distributed.initialize) before anything touches a device.
DEVICE_COMMANDS = ("train", "eval", "caption", "zero-shot", "ground", "extract-features")


def _one_line(error: BaseException) -> str:
  """``Type: message`` on one line (long multi-line messages folded and cut)."""
  text = " ".join(str(error).split()) or "(no message)"
  if len(text) > 600:
    text = text[:600] + " ..."
  return f"{type(error).__name__}: {text}"


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = "--verbose" in argv or os.environ.get("T5VIDEO_VERBOSE", "") not in ("", "0")
  argv = [a for a in argv if a != "--verbose"]
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  command, rest = argv[0], argv[1:]
  if command not in HANDLERS:
    print(f"t5video: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
    return 2
  from absl import flags, logging
  # Grain worker processes read absl flags; nothing else parses them here.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
  try:
    if command in DEVICE_COMMANDS and not any(a in ("-h", "--help") for a in rest):
      from t5video.train import distributed
      distributed.maybe_initialize()
    return HANDLERS[command](rest)
  except Exception as e:  # pylint: disable=broad-except
    # Bad input (a config, an annotation, a path) ends in one line; --verbose shows where.
    if verbose:
      raise
    print(f"t5video {command}: {_one_line(e)}  (--verbose shows the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
  raise SystemExit(main())
