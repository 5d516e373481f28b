"""The collectives of a compiled program, read from its optimized HLO text.

``collectives(compiled.as_text(), num_devices)`` counts every all-gather,
reduce-scatter, all-reduce, all-to-all and collective-permute one call of the
program runs on a device, with the bytes each moves: instructions inside a
``while`` body (a ``lax.scan`` over layers, micro-batches) count once per trip
(the trip count is read from the loop's ``known_trip_count``, else from the
condition's bound), inside fusions and calls once per call.

``wire_bytes`` is what one device sends over the interconnect for them, with
the usual ring algorithms over a group of ``n`` devices: an all-gather or a
reduce-scatter of ``S`` bytes (the full, unsharded size) sends ``S (n-1)/n``,
an all-reduce ``2 S (n-1)/n``, an all-to-all ``S (n-1)/n``, a permute ``S``.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
                "s4": 0.5, "u4": 0.5}
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \(.*\) -> .*\{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")


def _split_type(rest: str) -> tuple[str, str]:
  """``'(f32[2], s32[]) tuple(...)'`` -> the type and the text after it."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].lstrip()
  head, _, tail = rest.partition(" ")
  return head, tail


def type_bytes(type_text: str) -> float:
  """Bytes of an HLO type (a tuple's: the sum of its arrays)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(type_text):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _largest_array_bytes(type_text: str) -> float:
  sizes = [type_bytes(f"{d}[{s}]") for d, s in _ARRAY.findall(type_text)]
  return max(sizes) if sizes else 0.0


def _group_size(line: str, num_devices: int) -> int:
  m = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
  if m:
    return max(1, len([x for x in m.group(1).split(",") if x]))
  m = re.search(r"replica_groups=\[([0-9,]+)\]<=", line)
  if m:
    return int(m.group(1).split(",")[-1])
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
    axes = re.findall(r"'([^']+)'", m.group(2))
    return max(1, math.prod(int(sizes.get(a, 1)) for a in axes))
  return num_devices


def _parse(text: str) -> tuple[dict[str, list[dict[str, Any]]], str]:
  """computation -> its instructions (name, type, op, line); and the entry's name."""
  comps: dict[str, list[dict[str, Any]]] = {}
  entry, current = "", None
  for line in text.splitlines():
    m = _HEADER.match(line)
    if m:
      current = m.group(2)
      comps[current] = []
      if m.group(1):
        entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    if current is None:
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    type_text, after = _split_type(m.group(2))
    op = re.match(r"([a-z][a-z0-9\-]*)\(", after)
    comps[current].append({"name": m.group(1), "type": type_text, "op": op.group(1) if op else "",
                           "line": line})
  return comps, entry


def _trip_count(instr: dict[str, Any], comps) -> int:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr["line"])
  if m:
    return int(m.group(1))
  m = re.search(r"condition=%([\w.\-]+)", instr["line"])
  consts = []
  for c in comps.get(m.group(1), []) if m else []:
    k = re.search(r"constant\((-?\d+)\)", c["line"])
    if k and c["type"].startswith(("s32[]", "s64[]", "u32[]")):
      consts.append(int(k.group(1)))
  return max(consts) if len(consts) == 1 and consts[0] > 0 else 1


def collectives(text: str, num_devices: int) -> dict[str, dict[str, float]]:
  """``{kind: {'count', 'bytes', 'wire_bytes'}}`` per call of the program, per device.

  One collective split by XLA into pieces (an async start, its continuation and
  its done, each a fusion holding the same instruction) carries one channel id:
  it counts once.
  """
  comps, entry = _parse(text)
  shapes = {i["name"]: i["type"] for instrs in comps.values() for i in instrs}
  memo: dict[str, dict[str, list]] = {}

  def walk(name: str, stack: tuple = ()) -> dict[str, list]:
    """channel (or instruction) -> [kind, count, bytes, wire bytes] of one call of ``name``."""
    if name in memo:
      return memo[name]
    found: dict[str, list] = {}
    if name in stack:
      return found
    for instr in comps.get(name, []):
      op, line = instr["op"], instr["line"]
      kind = op[:-len("-start")] if op.endswith("-start") else op
      if kind in KINDS:
        operands = re.findall(r"%([\w.\-]+)", line.split("(", 2)[-1].split(")", 1)[0])
        operand_bytes = sum(type_bytes(shapes.get(o, "")) for o in operands)
        result_bytes = _largest_array_bytes(instr["type"])
        full = result_bytes if kind == "all-gather" else max(operand_bytes, result_bytes)
        n = _group_size(line, num_devices)
        share = (n - 1) / n if n > 1 else 0.0
        wire = {"all-reduce": 2 * share, "collective-permute": 1.0}.get(kind, share) * full
        channel = re.search(r"channel_id=(\d+)", line)
        found.setdefault(f"channel {channel.group(1)}" if channel else f"{name}/{instr['name']}",
                         [kind, 1, full, wire])
      if op == "while":
        called, times = re.findall(r"body=%([\w.\-]+)", line), _trip_count(instr, comps)
      elif op in ("reduce", "all-reduce", "reduce-scatter", "scatter", "sort", "map", "reduce-window",
                  "select-and-scatter", "all-reduce-start"):
        called, times = [], 1  # to_apply: a scalar reduction, no collectives
      else:
        called = re.findall(r"(?:calls=|body=|branch_computations=\{)%([\w.\-]+)", line)
        called += re.findall(r", %([\w.\-]+)(?=[,}])", line.split("branch_computations={", 1)[1]
                             if "branch_computations={" in line else "")
        times = 1
      for sub in called:
        for key, (kind, count, full, wire) in walk(sub, stack + (name,)).items():
          key = f"{instr['name']}*{key}" if times > 1 else key
          found.setdefault(key, [kind, times * count, times * full, times * wire])
    memo[name] = found
    return found

  totals: dict[str, list[float]] = {}
  for kind, count, full, wire in (walk(entry) if entry else {}).values():
    t = totals.setdefault(kind, [0, 0.0, 0.0])
    t[0] += count
    t[1] += full
    t[2] += wire
  return {k: {"count": int(totals[k][0]), "bytes": totals[k][1], "wire_bytes": totals[k][2]}
          for k in KINDS if k in totals}
