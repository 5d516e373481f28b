"""The training step, as a pure function: what the trainer jits and a benchmark can run alone.

``make_train_step(loss_fn, tx, labels, schedule, ...)`` returns
``train_step(state, batch) -> (state, metrics)``, to be jitted with the state's
and batch's shardings and the state donated (:class:`t5video.train.trainer.Engine`
does). Inside one step:

* frozen parameters (``labels`` ``'frozen'``) are stop-gradiented, so their
  weight gradients are never computed, and hold no optimizer state;
* the loss runs in ``compute_dtype`` on a cast of the fp32 master weights;
* ``micro_batches > 1`` splits the batch strided (every micro-batch spread over
  all data shards, under ``micro_shardings``) and accumulates gradients in a
  ``lax.scan``;
* a non-finite loss or gradient skips the update and is counted; after
  ``max_nonfinite`` in a row the state says ``stopped``.

It imports jax, optax and t5video's optimizer module only.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from t5video.train import optim as optim_lib


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, labels: Any,
                    schedule: Callable, *, micro_batches: int = 1, compute_dtype=jnp.float32,
                    max_nonfinite: int = 10, seed: int = 1, param_shardings: Any = None,
                    micro_shardings: Optional[Mapping[str, Any]] = None) -> Callable:
  """The step of a Task's ``loss_fn(params, batch, rng, *, train) -> (loss, metrics)``.

  Args:
    loss_fn: the recipe's loss (``Task.loss_fn``).
    tx, labels, schedule: from :func:`t5video.train.optim.make_optimizer`.
    micro_batches: gradient accumulation steps per batch.
    compute_dtype: the dtype the loss computes in (master weights stay fp32).
    max_nonfinite: non-finite steps in a row after which the state is ``stopped``.
    seed: the dropout stream's seed (folded with the step).
    param_shardings, micro_shardings: sharding constraints of the accumulated
      gradients and of each micro-batch (None: unconstrained).
  """

  def loss_on(params, batch, rng):
    # Frozen params get no gradient at all (saves their weight-gradient work).
    params = jax.tree_util.tree_map(
        lambda p, l: jax.lax.stop_gradient(p) if l == optim_lib.FROZEN else p, params, labels)
    if compute_dtype != jnp.float32:
      params = optim_lib.cast_floating(params, compute_dtype)  # fp32 master weights stay outside
    loss, metrics = loss_fn(params, batch, rng, train=True)
    return loss.astype(jnp.float32), {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  grad_fn = jax.value_and_grad(loss_on, has_aux=True)

  def train_step(state, batch):
    params = state["params"]
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])  # traced: no device constant
    if micro_batches == 1:
      (loss, metrics), grads = grad_fn(params, batch, jax.random.fold_in(rng, 0))
    else:
      def split(x):
        b = x.shape[0]
        # Strided split keeps every micro-batch spread over all data shards.
        x = x.reshape((b // micro_batches, micro_batches) + x.shape[1:])  # [batch/micro, micro, ...]
        return jnp.swapaxes(x, 0, 1)  # [micro, batch/micro, ...]
      pieces = {k: _constrain(split(v), micro_shardings and micro_shardings[k])
                for k, v in batch.items()}
      zeros = jax.tree_util.tree_map(jnp.zeros_like, params)

      def body(carry, xs):
        g_sum, l_sum, m_sum = carry
        mb, i = xs
        (l, m), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
        g_sum = _constrain(jax.tree_util.tree_map(jnp.add, g_sum, g), param_shardings)
        m_sum = jax.tree_util.tree_map(jnp.add, m_sum, m)
        return (g_sum, l_sum + l, m_sum), None

      _, metric_shapes = jax.eval_shape(loss_on, params, jax.tree_util.tree_map(lambda v: v[0], pieces), rng)
      m0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
      (grads, loss, metrics), _ = jax.lax.scan(
          body, (zeros, jnp.zeros((), jnp.float32), m0), (pieces, jnp.arange(micro_batches)))
      grads = jax.tree_util.tree_map(lambda g: g / micro_batches, grads)
      loss = loss / micro_batches
      metrics = jax.tree_util.tree_map(lambda m: m / micro_batches, metrics)

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite & ~state["stopped"]
    updates, new_opt = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jnp.where(apply, new, old)  # noqa: E731
    streak = jnp.where(finite, 0, state["nonfinite_streak"] + 1)
    new_state = {
        "params": jax.tree_util.tree_map(keep, new_params, params),
        "opt_state": jax.tree_util.tree_map(keep, new_opt, state["opt_state"]),
        "step": state["step"] + 1,
        "nonfinite_streak": streak,
        "nonfinite_total": state["nonfinite_total"] + (~finite).astype(jnp.int32),
        "stopped": state["stopped"] | (streak >= max_nonfinite),
    }
    out = {"loss": loss, **metrics, "grad_norm": grad_norm,
           "learning_rate": schedule(state["step"]),
           "skipped": (~apply).astype(jnp.int32)}
    return new_state, out

  return train_step


def _constrain(x, sharding):
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)
