"""Model FLOPs of a training step, counted from the program the model traces to.

MFU divides the FLOPs a step *must* do by the step time and the chip's peak
(MaxText's ``calculate_tflops_per_device``). MaxText writes those FLOPs as a
formula per architecture; t5video counts them from the loss function's jaxpr
instead, so that every recipe (CLIP towers, T5, temporal modules, LoRA, the R²
block) is counted by one rule and no formula can fall out of step with the code:

* every matrix product (``dot_general``, ``conv_general_dilated``) costs
  ``2 x output elements x contracted size`` in the forward pass;
* in the backward pass it costs the same again for each operand that depends on
  a trainable parameter (the gradient with respect to that operand is one more
  product of the same size): a trainable layer costs 3x its forward, a frozen
  layer under trainable ones 2x (activation gradients only), a frozen layer with
  nothing trainable below it 1x ("frozen parts counted forward only");
* a ``lax.scan`` body counts ``length`` times, ``cond`` its dearest branch, a
  ``jax.checkpoint`` region once (recomputation is not model work), a
  ``while_loop`` is not counted (its trip count is not in the program; the
  result says so).

Elementwise work (softmax, norms, activations) is not counted, as in MaxText. So
XLA's count of the compiled step exceeds this one by that elementwise work and
by what remat recomputes (a fully rematerialised step runs its forward twice:
about 4/3 of the model FLOPs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
from jax.extend import core as jex_core
import jax.numpy as jnp

_SKIP_TAINT = ("stop_gradient",)


@dataclasses.dataclass
class MatmulFlops:
  """FLOPs of the matrix products of one call, forward and backward."""
  forward: float = 0.0
  backward: float = 0.0
  uncounted_loops: int = 0  # while loops whose bodies were not counted

  @property
  def total(self) -> float:
    return self.forward + self.backward

  def add(self, other: "MatmulFlops", times: float = 1.0) -> None:
    self.forward += times * other.forward
    self.backward += times * other.backward
    self.uncounted_loops += other.uncounted_loops


def _is_float(aval) -> bool:
  # jnp.issubdtype knows bfloat16 (numpy's does not: it would drop bf16 activations' gradients)
  return hasattr(aval, "dtype") and jnp.issubdtype(aval.dtype, jnp.inexact)


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval
  contracted = math.prod(lhs.shape[d] for d in lhs_contract)
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _conv_flops(eqn) -> float:
  rhs = eqn.invars[1].aval  # the kernel
  out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
  per_output = math.prod(rhs.shape) / out_features  # contracted: in_features/groups x window
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output


def _jaxpr_of(value):
  return getattr(value, "jaxpr", value)  # ClosedJaxpr -> Jaxpr


def _count(jaxpr, tainted_in: Sequence[bool]) -> tuple[MatmulFlops, list[bool]]:
  """FLOPs of ``jaxpr`` given which inputs depend on trainable params; the outputs' taint."""
  tainted: set = {v for v, t in zip(jaxpr.invars, tainted_in) if t}
  is_tainted = lambda v: (not isinstance(v, jex_core.Literal)) and v in tainted  # noqa: E731
  out = MatmulFlops()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    ins = [is_tainted(v) for v in eqn.invars]
    outs = [any(ins)] * len(eqn.outvars)
    if name in ("dot_general", "conv_general_dilated"):
      f = _dot_flops(eqn) if name == "dot_general" else _conv_flops(eqn)
      out.forward += f
      out.backward += f * (int(ins[0]) + int(ins[1]))
    elif name == "scan":
      body = _jaxpr_of(eqn.params["jaxpr"])
      consts, carry = eqn.params["num_consts"], eqn.params["num_carry"]
      body_in = list(ins)
      first, _ = _count(body, body_in)  # the first trip sees the initial carries
      for _ in range(4):  # later trips' carries pick up taint from the body: to a fixed point
        sub, body_out = _count(body, body_in)
        new_carry = [a or b for a, b in zip(body_in[consts:consts + carry], body_out[:carry])]
        if new_carry == body_in[consts:consts + carry]:
          break
        body_in[consts:consts + carry] = new_carry
      length = eqn.params["length"]
      if length:
        out.add(first)
        out.add(sub, length - 1)
      outs = body_in[consts:consts + carry] + body_out[carry:]  # final carries, stacked outputs
    elif name == "cond":
      best, outs = None, [False] * len(eqn.outvars)
      for branch in eqn.params["branches"]:
        sub, branch_out = _count(_jaxpr_of(branch), ins[1:])
        outs = [a or b for a, b in zip(outs, branch_out)]
        if best is None or sub.total > best.total:
          best = sub
      if best is not None:
        out.add(best)
    elif name == "while":
      out.uncounted_loops += 1
    else:
      sub_jaxprs = [p for p in eqn.params.values() if hasattr(_jaxpr_of(p), "eqns")]
      if sub_jaxprs:  # pjit, remat, custom_jvp/vjp calls, closed_call: counted once
        sub, sub_out = _count(_jaxpr_of(sub_jaxprs[0]), ins)
        out.add(sub)
        if len(sub_out) == len(eqn.outvars):
          outs = sub_out
    if name in _SKIP_TAINT:
      outs = [False] * len(eqn.outvars)
    for v, t in zip(eqn.outvars, outs):
      if t and _is_float(v.aval):
        tainted.add(v)
  return out, [is_tainted(v) for v in jaxpr.outvars]


def matmul_flops(fn: Callable, args: Sequence[Any], trainable: Sequence[Any]) -> MatmulFlops:
  """The matrix-product FLOPs of ``fn(*args)`` and of its gradient.

  Args:
    fn: a traceable function (a loss).
    args: its arguments: arrays or ``jax.ShapeDtypeStruct`` trees.
    trainable: one tree per argument, the structure of that argument, with True
      on the leaves the gradient is taken with respect to (e.g. the trainable
      params) and False elsewhere.
  """
  closed = jax.make_jaxpr(fn)(*args)
  flags = [bool(x) for tree in trainable for x in jax.tree_util.tree_leaves(tree)]
  if len(flags) != len(closed.jaxpr.invars):
    raise ValueError(f"trainable has {len(flags)} leaves; fn takes {len(closed.jaxpr.invars)} arrays")
  result, _ = _count(closed.jaxpr, flags)
  return result
