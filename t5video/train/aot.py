"""``t5video compile``: a recipe's real steps compiled ahead of time for TPU slices, on this CPU.

For each stage of a config (a staged config's training stages, then the config
itself) and each named slice (:mod:`t5video.train.topology`), the stage's
Task is built for its shapes alone (``Task(config, shapes_only=True)``: no
weights read, no video decoded; an HF checkpoint the config names but this
machine lacks is replaced by its architecture's ``config.json``, from
:mod:`t5video.models.catalogue`), the trainer's own :class:`~t5video.train.trainer.Engine`
builds the sharded train step over the slice's compile-only devices, and XLA
compiles it for that TPU. What comes out, one flat record per (stage, slice, step):

* memory per chip (XLA's memory analysis) against the chip's HBM, in parts
  (params, optimizer state, batch, temporaries, program), whether it fits and,
  when not, what to change;
* XLA's FLOPs and bytes per chip, the model's matmul FLOPs of the whole step
  (:mod:`t5video.train.flops`; frozen parts forward only), the roofline step
  time (the larger of FLOPs over the chip's peak and bytes over its HBM
  bandwidth) and the MFU the roofline allows;
* every collective of the compiled HLO (:mod:`t5video.train.hlo`) with its bytes
  and their time at the chip's ICI bandwidth;
* the video frames per second each host must decode to keep up with the
  roofline step, and how many of its CPU cores that takes at t5video's measured
  decode rate.

The numbers are estimates of a program that never ran on the chip: XLA's cost
model for time, its buffer assignment for memory (which is what the TPU runtime
allocates), the ring formulas for collectives. ``docs/tpu.md`` holds the table.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import tempfile
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from t5video import config as config_lib
from t5video.models import catalogue
from t5video.train import flops as flops_lib
from t5video.train import hlo as hlo_lib
from t5video.train import optim as optim_lib
from t5video.train import sharding as sharding_lib
from t5video.train import stages as stages_lib
from t5video.train import task as task_lib
from t5video.train import topology as topology_lib
from t5video.train import trainer

# Sampled frames one CPU core decodes per second with t5video.data.decode, measured
# (docs/performance.md, "Sparse sampling"): 0.134 CPU s for an 8-frame clip of a 320x240
# H.264 video, i.e. about 60 frames per core-second; 720p clips with long GOPs: about 3.5.
DECODE_FRAMES_PER_CORE_S = 60.0

# Config keys that may name an HF checkpoint directory (replaced by its architecture when absent).
HF_KEYS = ("model.clip_init", "model.t5_init", "init_from.path", "model.tokenizer")


def _get(config, dotted: str):
  node = config
  for k in dotted.split("."):
    if not isinstance(node, (dict, ml_collections.ConfigDict)) or k not in node:
      return None
    node = node[k]
  return node


def _set(config, dotted: str, value) -> None:
  *head, last = dotted.split(".")
  node = config
  for k in head:
    node = node[k]
  with config.unlocked():
    node[last] = value


def architectures_for_absent_checkpoints(config: ml_collections.ConfigDict, scratch: str) -> list[str]:
  """Points every HF key of ``config`` whose directory is absent here at its architecture's
  ``config.json`` (in ``scratch``); returns what was replaced ('model.t5_init: flan-t5-base')."""
  replaced = []
  for key in HF_KEYS:
    path = _get(config, key)
    if not isinstance(path, str) or not path or os.path.isfile(os.path.join(path, "config.json")):
      continue
    name = catalogue.architecture_name(path)
    if name is None:
      continue
    _set(config, key, catalogue.write_config_dir(name, os.path.join(scratch, name)))
    replaced.append(f"{key}: {name}")
  return replaced


def stage_configs(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """``(name, config)`` of every training stage of ``config`` and of the config itself.

  Stages that are functions (pseudo-labelling) or copies of the run's own config
  (the text-only control: the same program) are not listed.
  """
  out = []
  for stage in config.get("stages", ()) or ():
    stage = stage.to_dict() if hasattr(stage, "to_dict") else dict(stage)
    if stage.get("run") or not stage.get("config"):
      continue
    out.append((stage["name"], stages_lib.stage_config(stage, parent=config)))
  out.append((config.task, config))
  return out


def _shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of ``ShapeDtypeStruct`` with shardings."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def _cost(compiled) -> dict[str, float]:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def advice(record: dict[str, Any], config) -> str:
  """What to change when a step does not fit (the largest part first)."""
  if record["fits"]:
    return ""
  parts, hbm = record["need_parts"], record["hbm_per_chip_bytes"]
  t = config.train
  mesh = tuple(config.mesh.shape)
  tips = []
  state = parts["params"] + parts["optimizer_state"]
  if state > 0.4 * hbm:
    if mesh[1] in (1,) and record["chips"] > 1:
      tips.append(f"shard the parameters and optimizer state over the chips: --config.mesh.shape='(1,-1,1)' "
                  f"(FSDP; now {mesh}; they take {state / 2**30:.1f} GiB per chip)")
    else:
      tips.append(f"tensor parallelism for the widest layers: --config.mesh.shape='(1,-1,{2 if record['chips'] % 2 == 0 else 1})' "
                  f"(state {state / 2**30:.1f} GiB per chip)")
  if parts["temporaries"] > 0.3 * hbm or not tips:
    if "remat" in (config.get("model") or {}) and not config.model.remat:
      tips.append("set --config.model.remat=True (recompute each block's activations in the backward pass)")
    tips.append(f"raise --config.train.micro_batches (now {t.micro_batches}; activations scale with "
                f"batch / micro_batches)")
    tips.append(f"or lower --config.train.batch_size (now {t.batch_size}; `--search batch` finds the largest that fits)")
  return "; ".join(tips)


@dataclasses.dataclass
class Options:
  """How ``compile_step`` measures (see :func:`compile_config`)."""
  decode_frames_per_core_s: float = DECODE_FRAMES_PER_CORE_S
  keep_hlo: bool = False


_UNMEASURED = ("xla_flops_per_chip", "xla_bytes_per_chip", "model_flops_per_step", "roofline_step_s",
               "collectives", "collective_s", "input_frames_per_s_per_host", "host_cores_needed")


def _compile_or_record_oom(compile_fn, record: dict[str, Any], parts: dict[str, int], chip, started: float):
  """``compile_fn()``'s executable; or None when XLA refuses it for lack of HBM, ``record`` then
  filled as not fitting (XLA's error gives the total; what the state and batch do not take is
  temporaries and program)."""
  try:
    return compile_fn()
  except Exception as e:  # pylint: disable=broad-except
    need = _out_of_hbm(e, chip.hbm_bytes)
    if need is None:
      raise
    need = max(need, sum(parts.values()))
    parts.update(temporaries=need - sum(parts.values()), program=0)
    record.update(need_per_chip_bytes=need, need_parts=parts, fits=False, xla_error=" ".join(str(e).split())[:300],
                  compile_s=time.perf_counter() - started, **{k: None for k in _UNMEASURED})
    return None


def _memory_and_roofline(compiled, parts: dict[str, int], chip) -> dict[str, Any]:
  """Memory per chip (XLA's buffer assignment) and the roofline of one compiled program."""
  stats, cost = compiled.memory_analysis(), _cost(compiled)
  parts.update(temporaries=int(stats.temp_size_in_bytes), program=int(stats.generated_code_size_in_bytes))
  # XLA's total: arguments + outputs not aliased to (donated) arguments + temporaries + code.
  need = (int(stats.argument_size_in_bytes) + int(stats.output_size_in_bytes) - int(stats.alias_size_in_bytes)
          + parts["temporaries"] + parts["program"])
  return {"need_per_chip_bytes": int(need), "need_parts": parts, "fits": need <= chip.hbm_bytes,
          "xla_flops_per_chip": float(cost.get("flops", 0.0)),
          "xla_bytes_per_chip": float(cost.get("bytes accessed", 0.0))}


def _roofline(record: dict[str, Any], model_flops_per_chip: float, chip) -> dict[str, Any]:
  """The larger of the compute time (XLA's FLOPs, or the model's matmul FLOPs where XLA counts
  fewer: its TPU cost analysis misses some fused products) and the memory time."""
  compute_s = max(record["xla_flops_per_chip"], model_flops_per_chip) / chip.peak_flops
  memory_s = record["xla_bytes_per_chip"] / chip.hbm_bytes_per_s if chip.hbm_bytes_per_s else 0.0
  return {"roofline_step_s": max(compute_s, memory_s),
          "roofline_bound": "compute" if compute_s >= memory_s else "memory"}


def build(config: ml_collections.ConfigDict, tpu: topology_lib.Slice) -> trainer.Engine:
  """The trainer's Engine for ``config`` over ``tpu``'s devices, its Task built for its shapes alone."""
  task = task_lib.get_task(config.task)(config, shapes_only=True)
  mesh = sharding_lib.make_mesh(tuple(config.mesh.shape), tpu.devices)
  return trainer.Engine.create(config, task=task, mesh=mesh)


def compile_train_step(config: ml_collections.ConfigDict, tpu: topology_lib.Slice, *, stage: str,
                       options: Options = Options(), engine: trainer.Engine | None = None) -> dict[str, Any]:
  """The record of ``config``'s training step compiled for ``tpu`` (see the module docstring)."""
  started = time.perf_counter()
  engine = engine or build(config, tpu)
  task, mesh = engine.task, engine.mesh
  chip = tpu.chip
  parts = {
      "params": _shard_bytes(engine.abstract_state["params"]),
      "optimizer_state": _shard_bytes(engine.abstract_state["opt_state"]),
      "batch": _shard_bytes(engine.abstract_batch),
  }
  record = {
      "stage": stage, "topology": tpu.name, "chips": tpu.chips, "slices": tpu.slices, "hosts": tpu.hosts,
      "device_kind": tpu.device_kind, "step": "train", "global_batch": int(config.train.batch_size),
      "micro_batches": int(config.train.micro_batches), "mesh": dict(mesh.shape),
      "hbm_per_chip_bytes": int(chip.hbm_bytes), "host_cores": tpu.host_cores,
  }
  compiled = _compile_or_record_oom(engine.compile, record, parts, chip, started)
  if compiled is None:
    record["advice"] = advice(record, config)
    return record
  compile_s = time.perf_counter() - started
  record.update(_memory_and_roofline(compiled, parts, chip))
  trainable = jax.tree_util.tree_map(lambda l: l != optim_lib.FROZEN, engine.labels)
  abstract_params = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                           engine.abstract_state["params"])
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in engine.abstract_batch.items()}
  with engine.context():
    model = flops_lib.matmul_flops(
        lambda p, b: task.loss_fn(p, b, jax.random.PRNGKey(0), train=True)[0],
        (abstract_params, abstract_batch), (trainable, jax.tree_util.tree_map(lambda _: False, abstract_batch)))
  record.update(_roofline(record, model.total / tpu.chips, chip))
  roofline_s = record["roofline_step_s"]
  collectives = hlo_lib.collectives(compiled.as_text(), tpu.chips)
  examples = task.example_shapes()
  frames = int(examples["frames"].shape[0]) if "frames" in examples else 0
  frames_per_host_s = (frames * config.train.batch_size / tpu.hosts / roofline_s) if roofline_s else 0.0
  record.update({
      "model_flops_per_step": model.total,
      "model_flops_forward": model.forward,
      "xla_over_model_flops": (record["xla_flops_per_chip"] * tpu.chips / model.total) if model.total else None,
      "mfu_at_roofline": (model.total / tpu.chips / chip.peak_flops / roofline_s) if roofline_s else None,
      "collectives": collectives,
      "collective_s": (sum(c["wire_bytes"] for c in collectives.values()) / chip.ici_bytes_per_s
                       if chip.ici_bytes_per_s else None),
      "input_frames_per_s_per_host": frames_per_host_s,
      "host_cores_needed": frames_per_host_s / options.decode_frames_per_core_s,
      "compile_s": compile_s,
  })
  record["advice"] = advice(record, config)
  if options.keep_hlo:
    record["hlo"] = compiled.as_text()
  return record


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _out_of_hbm(error: Exception, hbm: float) -> int | None:
  """The bytes per chip XLA's 'ran out of memory in HBM' compile error reports, else None."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text or "memory" not in text.lower():
    return None
  for pattern in (r"Total hbm usage >= ([\d.]+)([KMGT])",                    # CompileTimeHbmOom
                  r"required for HLO temporaries \(([\d.]+)([KMGT])\)"):   # temporaries alone
    m = re.search(pattern, text)
    if m:
      return int(float(m.group(1)) * _UNITS[m.group(2)])
  return int(hbm) + 1  # more than there is, by an amount XLA did not say


def compile_eval_steps(engine: trainer.Engine, tpu: topology_lib.Slice, *, stage: str,
                       options: Options = Options()) -> list[dict[str, Any]]:
  """Records of the Task's evaluation programs, each compiled for one chip of ``tpu`` (every host
  evaluates its share of the examples on one of its devices, with the parameters gathered there)."""
  records = []
  device = tpu.devices[0]
  one = jax.sharding.SingleDeviceSharding(device)
  params = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one),
                                  engine.abstract_state["params"])
  chip = tpu.chip
  for name, step in engine.task.eval_steps().items():
    batch = {k: jax.ShapeDtypeStruct((step.batch_size,) + tuple(v.shape), v.dtype, sharding=one)
             for k, v in step.example_shapes.items()}
    started = time.perf_counter()
    record = {"stage": stage, "topology": tpu.name, "chips": 1, "slices": 1, "hosts": 1,
              "device_kind": tpu.device_kind, "step": name, "what": step.what,
              "global_batch": step.batch_size, "micro_batches": 1, "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
              "hbm_per_chip_bytes": int(chip.hbm_bytes), "host_cores": tpu.host_cores}
    parts = {"params": _shard_bytes(params), "optimizer_state": 0, "batch": _shard_bytes(batch)}
    def compile_eval(fn=step.fn, batch=batch):
      with engine.context():
        return jax.jit(fn).lower(params, batch).compile()

    compiled = _compile_or_record_oom(compile_eval, record, parts, chip, started)
    if compiled is None:
      record["advice"] = (f"evaluation holds the whole model on one chip: lower its batch "
                          f"({step.batch_size} examples) or the model's size")
      records.append(record)
      continue
    record.update(_memory_and_roofline(compiled, parts, chip))
    abstract = lambda tree: jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)  # noqa: E731
    with engine.context():
      model = flops_lib.matmul_flops(step.fn, (abstract(params), abstract(batch)),
                                     (jax.tree_util.tree_map(lambda _: False, params),
                                      jax.tree_util.tree_map(lambda _: False, batch)))
    record.update(_roofline(record, 0.0 if model.uncounted_loops else model.total, chip))
    roofline_s = record["roofline_step_s"]
    frames = int(step.example_shapes["frames"].shape[0]) if "frames" in step.example_shapes else 0
    chips_per_host = max(1, tpu.chips // tpu.hosts)
    per_host = frames * step.batch_size * chips_per_host / roofline_s if roofline_s else 0.0
    record.update({
        # a decoding loop's trips are not in the program: its matmuls are not counted (None)
        "model_flops_per_step": None if model.uncounted_loops else model.total,
        "model_flops_forward": model.forward,
        "xla_over_model_flops": (None if model.uncounted_loops or not model.total
                                 else record["xla_flops_per_chip"] / model.total),
        "mfu_at_roofline": (None if model.uncounted_loops or not roofline_s
                            else model.total / chip.peak_flops / roofline_s),
        "collectives": {}, "collective_s": 0.0,
        # every chip of a host evaluating its own batches at the roofline
        "input_frames_per_s_per_host": per_host,
        "host_cores_needed": per_host / options.decode_frames_per_core_s,
        "compile_s": time.perf_counter() - started,
    })
    record["advice"] = "" if record["fits"] else (f"evaluation holds the whole model on one chip: lower its "
                                                  f"batch ({step.batch_size} examples)")
    records.append(record)
  return records


def _with_batch(config: ml_collections.ConfigDict, batch: int) -> ml_collections.ConfigDict:
  config = copy.deepcopy(config)
  with config.unlocked():
    config.train.batch_size = int(batch)
  return config


def search_batch(config: ml_collections.ConfigDict, tpu: topology_lib.Slice, *, stage: str,
                 options: Options = Options(), log=print) -> dict[str, Any]:
  """The record of the largest global batch that fits, to within an eighth of it.

  Batches are multiples of what the mesh and the processes divide (data x fsdp x
  micro-batches, the hosts): doubling from the config's batch until one does not
  fit, then halving the gap down to an eighth of the last batch that fit.
  """
  mesh_shape = sharding_lib.resolve_mesh_shape(tuple(config.mesh.shape), tpu.chips)
  unit = math.lcm(mesh_shape[0] * mesh_shape[1] * int(config.train.micro_batches), tpu.hosts)

  def trial(batch):
    record = compile_train_step(_with_batch(config, batch), tpu, stage=stage, options=options)
    log(f"  {stage} on {tpu.name}: global batch {batch}: {record['need_per_chip_bytes'] / 2**30:.2f} GiB "
        f"per chip of {record['hbm_per_chip_bytes'] / 2**30:.0f}: {'fits' if record['fits'] else 'does not fit'}")
    return record

  batch = max(unit, (int(config.train.batch_size) // unit) * unit)
  first = trial(batch)
  best, low, high = (first, batch, None) if first["fits"] else (None, 0, batch)
  while high is None:
    r = trial(2 * low)
    if r["fits"]:
      best, low = r, 2 * low
    else:
      high = 2 * low
  while True:
    step = max(unit, (max(low, unit) // 8) // unit * unit)  # an eighth of the last fit
    mid = low + max(step, (high - low) // 2 // step * step)
    if high - low <= step or mid >= high:
      break
    r = trial(mid)
    if r["fits"]:
      best, low = r, mid
    else:
      high = mid
  if best is None:
    first = dict(first)
    first["advice"] = f"not even a global batch of {unit} fits: {first['advice']}"
    return first
  best = dict(best)
  best["search"] = "batch"
  return best


def compile_config(config: ml_collections.ConfigDict, topologies: Sequence[str], *,
                   search: str = "", steps: Sequence[str] = ("train", "eval"), options: Options = Options(),
                   log=print) -> list[dict[str, Any]]:
  """Records of every training stage of ``config`` compiled for every slice in ``topologies``:
  its training step and (with ``'eval'`` in ``steps``) its evaluation programs."""
  config_lib.validate(config)
  records = []
  with tempfile.TemporaryDirectory(prefix="t5video-compile-") as scratch:
    named = []
    for name, stage_config in stage_configs(config):
      stage_config = copy.deepcopy(stage_config)
      for replaced in architectures_for_absent_checkpoints(stage_config, scratch):
        log(f"{name}: {replaced} (no local snapshot: its architecture's config.json, shapes only)")
      named.append((name, stage_config))
    for spec in topologies:
      tpu = topology_lib.slice_devices(spec)
      for name, stage_config in named:
        log(f"compiling {name} for {spec} ({tpu.chips} x {tpu.device_kind}, {tpu.hosts} host"
            f"{'s' * (tpu.hosts > 1)}) ...")
        engine = build(stage_config, tpu)
        if "train" in steps:
          if search == "batch":
            records.append(search_batch(stage_config, tpu, stage=name, options=options, log=log))
          else:
            records.append(compile_train_step(stage_config, tpu, stage=name, options=options, engine=engine))
        if "eval" in steps:
          records.extend(compile_eval_steps(engine, tpu, stage=name, options=options))
  return records


def _gib(x) -> str:
  return f"{x / 2**30:.2f}"


def table(records: Sequence[dict[str, Any]]) -> str:
  """The records as a text table (one line each), then the advice for those that do not fit."""
  head = ("stage", "topology", "step", "batch", "GiB/chip", "of", "fits", "model TFLOP", "XLA/model",
          "roofline ms", "bound", "MFU max", "coll. ms", "frames/s/host", "cores", "of")

  def num(value, fmt, scale=1.0):
    return "-" if value is None else format(value * scale, fmt)

  rows = [head]
  for r in records:
    rows.append((
        r["stage"], r["topology"], r["step"], str(r["global_batch"]), _gib(r["need_per_chip_bytes"]),
        f"{r['hbm_per_chip_bytes'] / 2**30:.0f}", "yes" if r["fits"] else "NO",
        num(r.get("model_flops_per_step"), ".2f", 1e-12), num(r.get("xla_over_model_flops"), ".2f"),
        num(r.get("roofline_step_s"), ".1f", 1e3), r.get("roofline_bound") or "-",
        num(r.get("mfu_at_roofline"), ".0%"), num(r.get("collective_s"), ".1f", 1e3),
        num(r.get("input_frames_per_s_per_host"), ".0f"), num(r.get("host_cores_needed"), ".1f"),
        str(r["host_cores"] or "-")))
  widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
  for r in records:
    if r.get("advice"):
      lines.append(f"{r['stage']} on {r['topology']} does not fit: {r['advice']}")
  return "\n".join(lines)
