"""Batched, jit-compatible autoregressive search: greedy, beam search, top-p sampling.

The searches are generic over a *step function* that runs one decoder step
with a cache (for T5, the self-attention key/value cache plus whatever the
encoder produced):

  ``step_fn(token_ids [B', 1] int32, cache, step int32[]) -> (logits [B', V], new_cache)``

``B'`` is the batch the search runs at: ``batch_size`` for greedy search,
``batch_size * beam_size`` for beam search and ``batch_size * num_samples``
for sampling. The cache is any pytree whose leaves either have the batch as
their leading axis or are scalars (``ndim == 0``, e.g. a cache index); the
searches repeat batch-leading leaves along the batch axis (each row ``b``
becomes rows ``b * n .. b * n + n - 1``) and, in beam search, reorder them
when beams are reselected. ``step`` is the position of the token being fed:
0 for ``start_id``, then 1, 2, ...; ``new_cache`` must keep the structure,
shapes and dtypes of ``cache``.

All searches run inside a single ``lax.while_loop`` that stops early once no
row can change any more, so they can be wrapped in ``jax.jit`` (with
``step_fn`` and the keyword arguments static, e.g. through a closure or
``functools.partial``). Outputs hold ``max_len`` generated tokens per
sequence (the start token is not included); the EOS token is kept and every
position after it is 0 (T5's padding id).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
PAD_ID = 0


class DecodeResult(NamedTuple):
  """Output of a search.

  Attributes:
    tokens: generated ids, ``[B, max_len]`` (greedy) or ``[B, n, max_len]``
      (beam search, best first; sampling, in sample order), padded with 0
      after EOS.
    scores: ``[B]`` or ``[B, n]``: the summed log-probability of each sequence
      (including its EOS) for greedy search and sampling; for beam search the
      length-penalised score it ranks by (multiply by
      ``gnmt_length_penalty(sequence_lengths(tokens, eos_id), alpha)`` to get
      the log-probability back).
  """
  tokens: jax.Array
  scores: jax.Array


def sequence_lengths(tokens: jax.Array, eos_id: int) -> jax.Array:
  """Number of tokens up to and including the first EOS (all of them without EOS).

  Args:
    tokens: ``[..., max_len]`` generated ids.
    eos_id: the end-of-sequence token.

  Returns:
    ``[...]`` int32 lengths.
  """
  tokens = jnp.asarray(tokens)
  is_eos = tokens == eos_id
  first = jnp.argmax(is_eos, axis=-1)  # index of the first EOS (0 when there is none)
  return jnp.where(jnp.any(is_eos, axis=-1), first + 1, tokens.shape[-1]).astype(jnp.int32)


# ---------------------------------------------------------------------------
# Cache helpers.
# ---------------------------------------------------------------------------


def _check_cache(cache: Any, batch_size: int) -> None:
  """Raises when a cache leaf is neither a scalar nor batch-leading."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    shape = jnp.shape(leaf)
    if len(shape) and shape[0] != batch_size:
      raise ValueError(f"cache leaf {jax.tree_util.keystr(path)} has shape {shape}: every cache "
                       f"leaf must be a scalar or have the batch ({batch_size}) as leading axis")


def expand_batch(tree: Any, n: int) -> Any:
  """Repeats every batch-leading leaf n times along the batch: ``[B, ...] -> [B * n, ...]``."""

  def expand(x):
    x = jnp.asarray(x)
    if x.ndim == 0:
      return x
    x = jnp.broadcast_to(x[:, None], (x.shape[0], n) + x.shape[1:])  # [B, n, ...]
    return x.reshape((x.shape[0] * n,) + x.shape[2:])  # [B * n, ...]

  return jax.tree_util.tree_map(expand, tree)


def _gather_beams(tree: Any, beam_indices: jax.Array, batch_size: int, old_beams: int) -> Any:
  """Reorders batch-leading leaves ``[B * old_beams, ...]`` by ``beam_indices [B, new_beams]``."""
  new_beams = beam_indices.shape[1]

  def gather(x):
    if x.ndim == 0:
      return x
    x = x.reshape((batch_size, old_beams) + x.shape[1:])  # [B, old_beams, ...]
    idx = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))  # [B, new_beams, 1...]
    x = jnp.take_along_axis(x, idx, axis=1)  # [B, new_beams, ...]
    return x.reshape((batch_size * new_beams,) + x.shape[2:])  # [B * new_beams, ...]

  return jax.tree_util.tree_map(gather, tree)


def _check_step_fn(step_fn: StepFn, cache: Any, rows: int) -> int:
  """Traces one step abstractly; returns the vocabulary size or raises a clear error."""
  tokens = jax.ShapeDtypeStruct((rows, 1), jnp.int32)
  step = jax.ShapeDtypeStruct((), jnp.int32)
  cache_shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x),
                                                                       jnp.asarray(x).dtype), cache)
  logits, new_cache = jax.eval_shape(step_fn, tokens, cache_shapes, step)
  if len(logits.shape) != 2 or logits.shape[0] != rows:
    raise ValueError(f"step_fn must return logits of shape [{rows}, vocab], got {logits.shape}")
  if jax.tree_util.tree_structure(new_cache) != jax.tree_util.tree_structure(cache_shapes):
    raise ValueError("step_fn changed the structure of the cache: "
                     f"{jax.tree_util.tree_structure(cache_shapes)} -> "
                     f"{jax.tree_util.tree_structure(new_cache)}")
  for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(cache_shapes),
                              jax.tree_util.tree_leaves(new_cache)):
    if old.shape != new.shape or old.dtype != new.dtype:
      raise ValueError(f"step_fn changed cache leaf {jax.tree_util.keystr(path)} from "
                       f"{old.shape} {old.dtype} to {new.shape} {new.dtype}")
  if logits.shape[1] < 2:
    raise ValueError(f"the vocabulary must have at least 2 tokens, got {logits.shape[1]}")
  return logits.shape[1]


def _check_args(batch_size: int, max_len: int, **counts: int) -> None:
  for name, value in dict(batch_size=batch_size, max_len=max_len, **counts).items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive Python int, got {value!r}")


# ---------------------------------------------------------------------------
# Greedy search.
# ---------------------------------------------------------------------------


def greedy_search(step_fn: StepFn, cache: Any, *, batch_size: int, max_len: int, start_id: int,
                  eos_id: int) -> DecodeResult:
  """Picks the most probable token at every step.

  Args:
    step_fn: see the module docstring.
    cache: the initial cache, batch ``batch_size``.
    batch_size: B.
    max_len: the number of tokens to generate at most.
    start_id: the first input token (T5: 0, the decoder start / pad id).
    eos_id: the end-of-sequence token.

  Returns:
    ``DecodeResult(tokens [B, max_len], scores [B])``, scores being summed
    log-probabilities.
  """
  _check_args(batch_size, max_len)
  _check_cache(cache, batch_size)
  _check_step_fn(step_fn, cache, batch_size)

  def cond(state):
    i, _, _, _, finished, _ = state
    return (i < max_len) & ~jnp.all(finished)

  def body(state):
    i, current, tokens, scores, finished, cache = state
    logits, cache = step_fn(current[:, None], cache, i)  # [B, V]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, V]
    next_ids = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [B]
    next_ids = jnp.where(finished, PAD_ID, next_ids)
    token_lp = jnp.take_along_axis(log_probs, next_ids[:, None], axis=-1)[:, 0]  # [B]
    scores = scores + jnp.where(finished, 0.0, token_lp)
    tokens = tokens.at[:, i].set(next_ids)
    finished = finished | (next_ids == eos_id)
    return i + 1, next_ids, tokens, scores, finished, cache

  state = (jnp.int32(0), jnp.full((batch_size,), start_id, jnp.int32),
           jnp.zeros((batch_size, max_len), jnp.int32), jnp.zeros((batch_size,), jnp.float32),
           jnp.zeros((batch_size,), bool), cache)
  _, _, tokens, scores, _, _ = lax.while_loop(cond, body, state)
  return DecodeResult(tokens, scores)


# ---------------------------------------------------------------------------
# Beam search.
# ---------------------------------------------------------------------------


def gnmt_length_penalty(length: jax.Array | int, alpha: float) -> jax.Array:
  """GNMT's length normalisation ``((5 + length) / 6) ** alpha`` (Wu et al., 2016)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def beam_search(step_fn: StepFn, cache: Any, *, batch_size: int, beam_size: int, max_len: int,
                start_id: int, eos_id: int, length_penalty: float = 0.6) -> DecodeResult:
  """Beam search with GNMT length normalisation.

  Every hypothesis is ranked by ``sum of token log-probs / ((5 + L) / 6) **
  length_penalty``, L being its number of generated tokens including EOS
  (``length_penalty=0`` ranks by the plain log-probability; larger values
  favour longer captions). At each step the ``2 * beam_size`` best extensions
  of the live beams are considered; those ending in EOS that rank within the
  first ``beam_size`` join the finished hypotheses, and the best
  ``beam_size`` that do not end in EOS stay live (the cache rows are
  reordered to follow them). Hypotheses that reach ``max_len`` without EOS
  are finished as they are. The loop stops early for the whole batch once,
  in every row, the worst of the ``beam_size`` kept finished hypotheses
  scores at least as well as any live beam could still reach.

  With ``beam_size=1`` and ``length_penalty=0`` this returns exactly the
  greedy sequence. With a positive length penalty and one beam it may return
  a longer sequence than greedy search, whose normalised score is higher.

  Args:
    step_fn: see the module docstring; it runs at batch ``B * beam_size``.
    cache: the initial cache at batch ``batch_size``; expanded here.
    batch_size: B.
    beam_size: the number of beams (and of returned hypotheses) per row.
    max_len: the number of tokens to generate at most.
    start_id: the first input token.
    eos_id: the end-of-sequence token.
    length_penalty: the exponent alpha of the GNMT length penalty.

  Returns:
    ``DecodeResult(tokens [B, beam, max_len], scores [B, beam])``, sorted
    best first by the length-penalised score; rows that found fewer than
    ``beam_size`` distinct hypotheses (tiny vocabularies) are filled with score
    ``-inf``.
  """
  _check_args(batch_size, max_len, beam_size=beam_size)
  _check_cache(cache, batch_size)
  b, k, n = batch_size, beam_size, max_len
  cache = expand_batch(cache, k)
  vocab = _check_step_fn(step_fn, cache, b * k)
  num_candidates = min(2 * k, k * vocab)
  neg_inf = jnp.float32(-jnp.inf)
  alpha = float(length_penalty)

  def penalty(length):
    return gnmt_length_penalty(length, alpha)

  def cond(state):
    return (state["i"] < n) & ~jnp.all(state["done"])

  def body(state):
    i = state["i"]
    current = state["live_tokens"][:, :, jnp.maximum(i - 1, 0)]  # [B, K]
    current = jnp.where(i == 0, start_id, current)
    logits, new_cache = step_fn(current.reshape(b * k, 1), state["cache"], i)  # [B*K, V]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_probs = log_probs.reshape(b, k, vocab)  # [B, K, V]
    candidates = state["live_logp"][:, :, None] + log_probs  # [B, K, V]
    top_logp, top_idx = lax.top_k(candidates.reshape(b, k * vocab), num_candidates)  # [B, 2K]
    source_beam = top_idx // vocab  # [B, 2K]
    token = (top_idx % vocab).astype(jnp.int32)  # [B, 2K]
    cand_tokens = jnp.take_along_axis(state["live_tokens"], source_beam[:, :, None], axis=1)
    cand_tokens = cand_tokens.at[:, :, i].set(token)  # [B, 2K, N]
    is_eos = token == eos_id
    last_step = i == n - 1
    in_top_k = jnp.arange(num_candidates)[None, :] < k  # [1, 2K]

    # Finished pool: EOS extensions ranked within the top K (every top-K
    # extension at the last step) compete with the kept finished hypotheses.
    finishing = in_top_k & (is_eos | last_step)  # [B, 2K]
    new_scores = jnp.where(finishing, top_logp / penalty(i + 1), neg_inf)
    pool_scores = jnp.concatenate([state["fin_scores"], new_scores], axis=1)  # [B, 3K]
    pool_tokens = jnp.concatenate([state["fin_tokens"], cand_tokens], axis=1)  # [B, 3K, N]
    fin_scores, keep = lax.top_k(pool_scores, k)  # [B, K]
    fin_tokens = jnp.take_along_axis(pool_tokens, keep[:, :, None], axis=1)  # [B, K, N]

    # Live pool: the best K extensions that do not end in EOS.
    live_candidates = jnp.where(is_eos, neg_inf, top_logp)
    live_logp, keep = lax.top_k(live_candidates, k)  # [B, K]
    live_tokens = jnp.take_along_axis(cand_tokens, keep[:, :, None], axis=1)  # [B, K, N]
    parent = jnp.take_along_axis(source_beam, keep, axis=1)  # [B, K]
    new_cache = _gather_beams(new_cache, parent, b, k)

    # A live beam ends with L in [i + 2, n] tokens and its log-prob can only
    # fall, so its best reachable score divides by the largest penalty there.
    best_lp = jnp.maximum(penalty(jnp.minimum(i + 2, n)), penalty(n))
    best_live = live_logp[:, 0] / best_lp  # [B]
    done = fin_scores[:, k - 1] >= best_live
    return dict(i=i + 1, live_tokens=live_tokens, live_logp=live_logp, fin_tokens=fin_tokens,
                fin_scores=fin_scores, done=done, cache=new_cache)

  state = dict(
      i=jnp.int32(0),
      live_tokens=jnp.zeros((b, k, n), jnp.int32),
      # Only the first beam is live at the start; the others would duplicate it.
      live_logp=jnp.tile(jnp.concatenate([jnp.zeros((1,)), jnp.full((k - 1,), -jnp.inf)]),
                         (b, 1)).astype(jnp.float32),
      fin_tokens=jnp.zeros((b, k, n), jnp.int32),
      fin_scores=jnp.full((b, k), -jnp.inf, jnp.float32),
      done=jnp.zeros((b,), bool),
      cache=cache,
  )
  state = lax.while_loop(cond, body, state)
  return DecodeResult(state["fin_tokens"], state["fin_scores"])


# ---------------------------------------------------------------------------
# Sampling.
# ---------------------------------------------------------------------------


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
  """Sets to -inf every logit outside the nucleus of probability ``top_p``.

  The nucleus is the smallest set of most probable tokens whose total
  probability reaches ``top_p`` (the most probable token is always in it;
  tokens tied with the least probable member are kept too).

  Args:
    logits: ``[..., V]``.
    top_p: in (0, 1]; 1 keeps every token.
  """
  if top_p >= 1.0:
    return logits
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]  # [..., V] descending
  sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs  # [..., V]
  keep = mass_before < top_p  # [..., V]; always true for the first token
  num_keep = jnp.sum(keep, axis=-1, keepdims=True)  # [..., 1]
  threshold = jnp.take_along_axis(sorted_logits, num_keep - 1, axis=-1)  # [..., 1]
  return jnp.where(logits < threshold, -jnp.inf, logits)


def sample(step_fn: StepFn, cache: Any, rng: jax.Array, *, batch_size: int, num_samples: int,
           max_len: int, start_id: int, eos_id: int, top_p: float = 0.9,
           temperature: float = 1.0) -> DecodeResult:
  """Draws ``num_samples`` sequences per row by nucleus (top-p) sampling.

  At every step the logits are divided by ``temperature``, cut to the top-p
  nucleus (:func:`top_p_filter`) and sampled. The key for step ``i`` is
  ``jax.random.fold_in(rng, i)``, so a fixed ``rng`` gives the same samples.

  With one key per row (``rng`` of shape ``[B, 2]``, raw ``PRNGKey``s), sample
  ``s`` of row ``b`` draws step ``i`` with ``fold_in(fold_in(rng[b], s), i)``:
  a row's samples then depend on its own key alone, not on the other rows of
  the batch or its position in it (pseudo-labelling keys each clip by its id,
  so a restarted or re-sharded job draws the same captions).

  Args:
    step_fn: see the module docstring; it runs at batch ``B * num_samples``.
    cache: the initial cache at batch ``batch_size``; expanded here.
    rng: a PRNG key (shape ``[2]``), or one per row (``[B, 2]``).
    batch_size: B.
    num_samples: sequences drawn per row.
    max_len: the number of tokens to generate at most.
    start_id: the first input token.
    eos_id: the end-of-sequence token.
    top_p: the nucleus mass in (0, 1].
    temperature: > 0; below 1 sharpens, above 1 flattens the distribution.

  Returns:
    ``DecodeResult(tokens [B, num_samples, max_len], scores [B, num_samples])``;
    scores are the summed log-probabilities under the model's
    own distribution (temperature 1, no nucleus cut), so they can re-rank
    the samples.
  """
  _check_args(batch_size, max_len, num_samples=num_samples)
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if not temperature > 0.0:
    raise ValueError(f"temperature must be > 0 (use greedy_search for 0), got {temperature}")
  _check_cache(cache, batch_size)
  rows = batch_size * num_samples
  per_row = jnp.ndim(rng) == 2
  if per_row:
    if jnp.shape(rng)[0] != batch_size:
      raise ValueError(f"per-row keys: rng has shape {jnp.shape(rng)}, want ({batch_size}, 2)")
    # [B, 2] -> [B * S, 2]: row b * S + s (expand_batch's order) takes fold_in(rng[b], s).
    row_keys = jax.vmap(jax.random.fold_in)(
        jnp.repeat(rng, num_samples, axis=0), jnp.tile(jnp.arange(num_samples), batch_size))
  cache = expand_batch(cache, num_samples)
  _check_step_fn(step_fn, cache, rows)

  def draw(i, filtered):  # [R, V] -> [R]
    if per_row:
      return jax.vmap(lambda k, l: jax.random.categorical(jax.random.fold_in(k, i), l))(
          row_keys, filtered)
    return jax.random.categorical(jax.random.fold_in(rng, i), filtered, axis=-1)

  def cond(state):
    i, _, _, _, finished, _ = state
    return (i < max_len) & ~jnp.all(finished)

  def body(state):
    i, current, tokens, scores, finished, cache = state
    logits, cache = step_fn(current[:, None], cache, i)  # [R, V]
    logits = logits.astype(jnp.float32)
    model_lp = jax.nn.log_softmax(logits, axis=-1)  # [R, V]
    filtered = top_p_filter(logits / temperature, top_p)
    next_ids = draw(i, filtered)
    next_ids = jnp.where(finished, PAD_ID, next_ids.astype(jnp.int32))  # [R]
    token_lp = jnp.take_along_axis(model_lp, next_ids[:, None], axis=-1)[:, 0]  # [R]
    scores = scores + jnp.where(finished, 0.0, token_lp)
    tokens = tokens.at[:, i].set(next_ids)
    finished = finished | (next_ids == eos_id)
    return i + 1, next_ids, tokens, scores, finished, cache

  state = (jnp.int32(0), jnp.full((rows,), start_id, jnp.int32),
           jnp.zeros((rows, max_len), jnp.int32), jnp.zeros((rows,), jnp.float32),
           jnp.zeros((rows,), bool), cache)
  _, _, tokens, scores, _, _ = lax.while_loop(cond, body, state)
  tokens = tokens.reshape(batch_size, num_samples, max_len)  # [B, S, N]
  scores = scores.reshape(batch_size, num_samples)  # [B, S]
  return DecodeResult(tokens, scores)
