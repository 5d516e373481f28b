"""Greedy, beam and top-p search against numpy references on toy language models."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5video.evaluate import decoding

EOS = 1


class ToyLM:
  """A position- and history-dependent toy language model.

  The next-token logits are ``table[step, previous input, current input] +
  0.3 * counts of every token fed so far``, so they depend on the whole
  history through a cache with a batch-leading int leaf (``prev``), a
  batch-leading 2-D float leaf (``hist``) and a scalar leaf (``index``). A
  search that reorders or expands the cache wrongly produces other numbers
  than the numpy reference, and a step index out of sync with the cache index
  makes the logits NaN.
  """

  def __init__(self, seed: int, vocab: int, max_len: int, eos_bias: float = 0.5):
    rng = np.random.default_rng(seed)
    self.table = (2.0 * rng.normal(size=(max_len, vocab, vocab, vocab))).astype(np.float32)
    self.table[..., EOS] += eos_bias
    self.vocab = vocab

  def step_fn(self, tokens, cache, step):
    table = jnp.asarray(self.table)
    current = tokens[:, 0]  # [B']
    hist = cache["hist"] + jax.nn.one_hot(current, self.vocab)  # [B', V]
    logits = table[cache["index"], cache["prev"], current] + 0.3 * hist  # [B', V]
    logits = logits + jnp.where(cache["index"] == step, 0.0, jnp.nan)
    return logits, {"prev": current, "hist": hist, "index": cache["index"] + 1}

  def init_cache(self, prev):
    prev = np.asarray(prev, np.int32)
    return {"prev": jnp.asarray(prev), "hist": jnp.zeros((len(prev), self.vocab), jnp.float32),
            "index": jnp.int32(0)}

  def log_probs(self, step, prev, current, hist):
    """numpy: log-softmax of the next-token logits; returns it and the new hist."""
    hist = hist.copy()
    hist[current] += 1
    logits = self.table[step, prev, current].astype(np.float64) + 0.3 * hist
    logits = logits - logits.max()
    return logits - np.log(np.exp(logits).sum()), hist

  def sequence_log_prob(self, prev0, tokens, start_id=0):
    """numpy: summed log-prob of ``tokens`` (up to and including EOS)."""
    prev, current, hist, total = prev0, start_id, np.zeros(self.vocab), 0.0
    for step, token in enumerate(tokens):
      lp, hist = self.log_probs(step, prev, current, hist)
      total += lp[token]
      prev, current = current, token
      if token == EOS:
        break
    return total

  def brute_force(self, prev0, max_len, alpha, start_id=0):
    """Every complete sequence (ends in EOS or has max_len tokens), best first."""
    out = []

    def expand(step, prev, current, hist, logp, tokens):
      lp, new_hist = self.log_probs(step, prev, current, hist)
      for token in range(self.vocab):
        seq, total = tokens + [token], logp + lp[token]
        if token == EOS or step == max_len - 1:
          penalty = ((5.0 + len(seq)) / 6.0) ** alpha
          out.append((total / penalty, total, seq + [0] * (max_len - len(seq))))
        else:
          expand(step + 1, current, token, new_hist, total, seq)

    expand(0, prev0, start_id, np.zeros(self.vocab), 0.0, [])
    return sorted(out, key=lambda x: -x[0])


def _numpy_greedy(lm, prev0, max_len):
  prev, current, hist = prev0, 0, np.zeros(lm.vocab)
  tokens, total = [], 0.0
  for step in range(max_len):
    lp, hist = lm.log_probs(step, prev, current, hist)
    token = int(np.argmax(lp))
    tokens.append(token)
    total += lp[token]
    prev, current = current, token
    if token == EOS:
      break
  return tokens + [0] * (max_len - len(tokens)), total


def test_greedy_matches_numpy_under_jit():
  lm, max_len, prev0 = ToyLM(0, vocab=6, max_len=7, eos_bias=1.5), 7, [0, 2, 3, 5]
  search = jax.jit(functools.partial(decoding.greedy_search, lm.step_fn, batch_size=4,
                                     max_len=max_len, start_id=0, eos_id=EOS))
  result = search(lm.init_cache(prev0))
  assert result.tokens.shape == (4, max_len) and result.tokens.dtype == jnp.int32
  expected = [_numpy_greedy(lm, p, max_len) for p in prev0]
  np.testing.assert_array_equal(np.asarray(result.tokens), [e[0] for e in expected])
  np.testing.assert_allclose(np.asarray(result.scores), [e[1] for e in expected], atol=1e-4)
  # The case is meaningful: some row stops early (EOS kept, zeros after), some does not.
  lengths = [t.index(EOS) + 1 if EOS in t else max_len for t, _ in expected]
  assert min(lengths) < max_len and max(lengths) > 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_one_equals_greedy(seed):
  lm, max_len = ToyLM(seed, vocab=7, max_len=8, eos_bias=1.0), 8
  cache = lm.init_cache([0, 1, 4])
  greedy = decoding.greedy_search(lm.step_fn, cache, batch_size=3, max_len=max_len, start_id=0,
                                  eos_id=EOS)
  beam = jax.jit(lambda c: decoding.beam_search(
      lm.step_fn, c, batch_size=3, beam_size=1, max_len=max_len, start_id=0, eos_id=EOS,
      length_penalty=0.0))(cache)
  assert beam.tokens.shape == (3, 1, max_len)
  np.testing.assert_array_equal(np.asarray(beam.tokens[:, 0]), np.asarray(greedy.tokens))
  np.testing.assert_allclose(np.asarray(beam.scores[:, 0]), np.asarray(greedy.scores), atol=1e-5)


def _markov_step_fn(transitions):
  """A first-order model: logits = log transitions[current token]."""
  log_t = jnp.log(jnp.asarray(transitions, jnp.float32))

  def step_fn(tokens, cache, step):
    del step
    return log_t[tokens[:, 0]], cache

  return step_fn


def test_beam_beats_suboptimal_greedy():
  # Tokens: 0 start/pad, 1 EOS, 2 "A", 3 "B". From start: A 0.6, B 0.4.
  # After A: EOS 0.4, A 0.3, B 0.3. After B: EOS 0.9. Greedy takes A then EOS
  # (0.24); the best two-token sequence is B EOS (0.36).
  eps = 1e-6
  transitions = np.array([[eps, eps, 0.6, 0.4],
                          [0.25, 0.25, 0.25, 0.25],
                          [eps, 0.4, 0.3, 0.3],
                          [eps, 0.9, 0.05, 0.05]])
  step_fn = _markov_step_fn(transitions)
  cache = {"dummy": jnp.zeros((2, 3))}
  greedy = decoding.greedy_search(step_fn, cache, batch_size=2, max_len=2, start_id=0, eos_id=EOS)
  np.testing.assert_array_equal(np.asarray(greedy.tokens), [[2, 1], [2, 1]])
  beam = decoding.beam_search(step_fn, cache, batch_size=2, beam_size=2, max_len=2, start_id=0,
                              eos_id=EOS, length_penalty=0.0)
  np.testing.assert_array_equal(np.asarray(beam.tokens[:, 0]), [[3, 1], [3, 1]])
  np.testing.assert_allclose(np.asarray(beam.scores[:, 0]), np.log(0.36), atol=1e-5)
  np.testing.assert_allclose(np.asarray(beam.scores[:, 1]), np.log(0.24), atol=1e-5)
  # The brute-force best over all 16 two-token sequences is B EOS too.
  best = max(((a, b) for a in range(4) for b in range(4)),
             key=lambda s: (np.log(transitions[0, s[0]]) +
                            (0.0 if s[0] == EOS else np.log(transitions[s[0], s[1]]))))
  assert best == (3, 1)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_matches_brute_force(alpha):
  # Vocab 3, 3 steps: at most 4 live prefixes x 3 tokens = 12 extensions per
  # step, so 12 beams keep every hypothesis and the search is exhaustive.
  lm, max_len, prev0 = ToyLM(5, vocab=3, max_len=3, eos_bias=0.0), 3, [0, 2]
  beam = jax.jit(lambda c: decoding.beam_search(
      lm.step_fn, c, batch_size=2, beam_size=12, max_len=max_len, start_id=0, eos_id=EOS,
      length_penalty=alpha))(lm.init_cache(prev0))
  for row, p in enumerate(prev0):
    expected = lm.brute_force(p, max_len, alpha)[:12]
    np.testing.assert_array_equal(np.asarray(beam.tokens[row]), [e[2] for e in expected])
    np.testing.assert_allclose(np.asarray(beam.scores[row]), [e[0] for e in expected], atol=1e-4)
    lengths = decoding.sequence_lengths(beam.tokens[row], EOS)
    log_probs = beam.scores[row] * decoding.gnmt_length_penalty(lengths, alpha)
    np.testing.assert_allclose(np.asarray(log_probs), [e[1] for e in expected], atol=1e-4)


def test_beam_small_beam_is_sorted_padded_and_scored():
  lm, max_len = ToyLM(3, vocab=6, max_len=6, eos_bias=1.0), 6
  prev0 = [1, 4]
  beam = decoding.beam_search(lm.step_fn, lm.init_cache(prev0), batch_size=2, beam_size=3,
                              max_len=max_len, start_id=0, eos_id=EOS, length_penalty=0.6)
  scores = np.asarray(beam.scores)
  assert np.all(np.diff(scores, axis=1) <= 0) and np.isfinite(scores).all()
  for row, p in enumerate(prev0):
    brute = lm.brute_force(p, max_len, 0.6)
    assert scores[row, 0] <= brute[0][0] + 1e-5  # nothing beats the exhaustive optimum
    lengths = np.asarray(decoding.sequence_lengths(beam.tokens[row], EOS))
    for hyp, length, score in zip(np.asarray(beam.tokens[row]).tolist(), lengths, scores[row]):
      assert length == (hyp.index(EOS) + 1 if EOS in hyp else max_len)
      assert all(t == 0 for t in hyp[length:])
      log_prob = lm.sequence_log_prob(p, hyp[:length])
      assert score == pytest.approx(log_prob / ((5 + length) / 6) ** 0.6, abs=1e-4)


def _fixed_step_fn(probs):
  logits = jnp.log(jnp.asarray(probs, jnp.float32))

  def step_fn(tokens, cache, step):
    del step
    return jnp.broadcast_to(logits, (tokens.shape[0], logits.shape[0])), cache

  return step_fn


def test_top_p_never_leaves_the_nucleus():
  # Sorted: 0.6 (token 2), 0.3 (token 3) reach 0.9 >= 0.85: the nucleus is {2, 3}.
  step_fn = _fixed_step_fn([0.0001, 0.0499, 0.6, 0.3, 0.05])
  cache = {"x": jnp.zeros((2, 1))}
  run = jax.jit(lambda c, key, p: decoding.sample(
      step_fn, c, key, batch_size=2, num_samples=64, max_len=8, start_id=0, eos_id=EOS,
      top_p=p), static_argnums=2)
  out = run(cache, jax.random.PRNGKey(0), 0.85)
  tokens = np.asarray(out.tokens)
  assert tokens.shape == (2, 64, 8)
  assert set(np.unique(tokens)) == {2, 3}
  np.testing.assert_allclose(np.asarray(out.scores),
                             (np.log(0.6) * (tokens == 2) + np.log(0.3) * (tokens == 3)).sum(-1),
                             atol=1e-4)
  # Same key, same samples; another key, other samples.
  np.testing.assert_array_equal(np.asarray(run(cache, jax.random.PRNGKey(0), 0.85).tokens), tokens)
  assert not np.array_equal(np.asarray(run(cache, jax.random.PRNGKey(1), 0.85).tokens), tokens)
  # Without the cut, tail tokens and EOS (then padding) appear.
  full = np.asarray(run(cache, jax.random.PRNGKey(0), 1.0).tokens)
  assert {1, 4} <= set(np.unique(full))


def test_top_p_filter():
  logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
  kept = np.isfinite(np.asarray(decoding.top_p_filter(logits, 0.75)))
  np.testing.assert_array_equal(kept, [[False, True, False, True]])
  kept = np.isfinite(np.asarray(decoding.top_p_filter(logits, 0.1)))
  np.testing.assert_array_equal(kept, [[False, True, False, False]])
  assert np.isfinite(np.asarray(decoding.top_p_filter(logits, 1.0))).all()


def test_sample_scores_are_model_log_probs_and_padded():
  lm, max_len, prev0 = ToyLM(7, vocab=5, max_len=6, eos_bias=1.0), 6, [0, 3]
  out = decoding.sample(lm.step_fn, lm.init_cache(prev0), jax.random.PRNGKey(3), batch_size=2,
                        num_samples=5, max_len=max_len, start_id=0, eos_id=EOS, top_p=1.0,
                        temperature=1.3)
  assert out.tokens.shape == (2, 5, max_len)
  finished_early = 0
  for row, p in enumerate(prev0):
    for hyp, score in zip(np.asarray(out.tokens[row]).tolist(), np.asarray(out.scores[row])):
      length = hyp.index(EOS) + 1 if EOS in hyp else max_len
      finished_early += length < max_len
      assert all(t == 0 for t in hyp[length:])
      assert score == pytest.approx(lm.sequence_log_prob(p, hyp[:length]), abs=1e-4)
  assert finished_early > 0


def test_bad_inputs_raise_clear_errors():
  lm = ToyLM(0, vocab=4, max_len=4)
  cache = lm.init_cache([0, 1])
  with pytest.raises(ValueError, match=r"cache leaf \['hist'\] has shape \(3, 4\)"):
    decoding.greedy_search(lm.step_fn, {**cache, "hist": jnp.zeros((3, 4))}, batch_size=2,
                           max_len=4, start_id=0, eos_id=EOS)

  def bad_step(tokens, cache, step):
    logits, new_cache = lm.step_fn(tokens, cache, step)
    return logits, {**new_cache, "hist": new_cache["hist"][:, :2]}

  with pytest.raises(ValueError, match=r"changed cache leaf \['hist'\]"):
    decoding.beam_search(bad_step, cache, batch_size=2, beam_size=2, max_len=4, start_id=0,
                         eos_id=EOS)
  with pytest.raises(ValueError, match="top_p must be in"):
    decoding.sample(lm.step_fn, cache, jax.random.PRNGKey(0), batch_size=2, num_samples=2,
                    max_len=4, start_id=0, eos_id=EOS, top_p=0.0)
  with pytest.raises(ValueError, match="beam_size must be a positive"):
    decoding.beam_search(lm.step_fn, cache, batch_size=2, beam_size=0, max_len=4, start_id=0,
                         eos_id=EOS)


def test_loops_exit_early_when_all_rows_finish():
  calls = []

  def step_fn(tokens, cache, step):
    jax.debug.callback(lambda s: calls.append(int(s)), step)
    logits = jnp.full((tokens.shape[0], 4), -15.0).at[:, EOS].set(0.0)  # EOS almost surely
    return logits, cache

  cache = {"x": jnp.zeros((3,))}
  out = decoding.greedy_search(step_fn, cache, batch_size=3, max_len=20, start_id=0, eos_id=EOS)
  jax.block_until_ready(out)
  assert calls == [0]
  np.testing.assert_array_equal(np.asarray(out.tokens), [[EOS] + [0] * 19] * 3)
  calls.clear()
  # Two beams: EOS finishes at step 0; the runner-up must live one more step
  # before the second finished slot provably cannot improve.
  out = decoding.beam_search(step_fn, cache, batch_size=3, beam_size=2, max_len=20, start_id=0,
                             eos_id=EOS, length_penalty=0.0)
  jax.block_until_ready(out)
  assert calls == [0, 1]
  np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), [[EOS] + [0] * 19] * 3)
