"""CaptionT5 at inference: jitted encoding and decoding (greedy, beam, sampling,
rank classification), CLIP-guided re-ranking of candidate captions, and captions
for a user's own files (``t5video caption``).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t5video.data import pipeline
from t5video.data import thoughts as thoughts_lib
from t5video.data.records import VideoRecord
from t5video.evaluate import decoding
from t5video.models import t5 as t5_lib
from t5video.models.captiont5 import CaptionT5, visual_inputs
from t5video.train import memory
from t5video.train import task as task_lib


class PredictMixin:
  """CaptionT5Task's prediction side (its ``model``, ``tokenizer``, ``config``, ``class_names``)."""

  @property
  def eos_id(self) -> int:
    """The tokenizer's end-of-sequence id (the T5 config's, for a Task built for its shapes alone)."""
    return int(self.model_config.t5.eos_token_id) if self.shapes_only else self.tokenizer.eos_id

  @property
  def token_vocab_size(self) -> int:
    """Ids the tokenizer produces (the embedding table may be padded past them)."""
    return int(self.model_config.t5.vocab_size) if self.shapes_only else self.tokenizer.vocab_size

  @functools.cached_property
  def _programs(self) -> dict:
    """The pure programs of inference: encode, greedy, beam, sample, rank (not jitted)."""
    model, ev = self.model, self.config.eval
    max_len = self.config.text.max_target_len

    def encode(params, visual, frame_mask, input_ids, attention_mask):
      return model.apply({"params": params}, input_ids, attention_mask,
                         **visual_inputs(visual), frame_mask=frame_mask,
                         method=CaptionT5.encode)

    def make_step(params):
      def step_fn(tokens, cache, step):
        logits, mut = model.apply(
            {"params": params, "cache": {"t5": cache["t5"]}}, cache["enc"], cache["enc_mask"], tokens,
            decode=True, method=CaptionT5.decode, mutable=["cache"])
        logits = logits[:, -1, :]  # [b, padded vocab]
        # Ids past the tokenizer's vocabulary (padding of the embedding table) are never produced.
        real = jnp.arange(logits.shape[-1]) < self.token_vocab_size
        return jnp.where(real, logits, -1e9), {**cache, "t5": mut["cache"]["t5"]}
      return step_fn

    def init_cache(hidden, mask):
      t5_cache = t5_lib.init_cache(self.model_config.t5, hidden.shape[0], max_len, hidden, mask)
      return {"t5": t5_cache, "enc": hidden, "enc_mask": mask}

    def greedy(params, hidden, mask):
      res = decoding.greedy_search(make_step(params), init_cache(hidden, mask),
                                   batch_size=hidden.shape[0], max_len=max_len,
                                   start_id=0, eos_id=self.eos_id)
      return res.tokens, res.scores

    def beam(params, hidden, mask, beam_size):
      res = decoding.beam_search(make_step(params), init_cache(hidden, mask),
                                 batch_size=hidden.shape[0], beam_size=beam_size,
                                 max_len=max_len, start_id=0, eos_id=self.eos_id,
                                 length_penalty=ev.length_penalty)
      return res.tokens, res.scores

    def sample(params, hidden, mask, rng, num_samples, top_p, temperature):
      res = decoding.sample(make_step(params), init_cache(hidden, mask), rng,
                            batch_size=hidden.shape[0], num_samples=num_samples, max_len=max_len,
                            start_id=0, eos_id=self.eos_id, top_p=top_p,
                            temperature=temperature)
      # Length-normalised like beam search's scores, so the two rank alike.
      lengths = decoding.sequence_lengths(res.tokens, self.eos_id)  # [b, n]
      return res.tokens, res.scores / decoding.gnmt_length_penalty(lengths, ev.length_penalty)

    def rank(params, hidden, mask, cand_ids, cand_mask):
      """Sum log-likelihood of each candidate [C, L] for each example -> [B, C]."""
      b, c = hidden.shape[0], cand_ids.shape[0]
      # [b, s, d] -> [b * c, s, d]
      h = jnp.repeat(hidden, c, axis=0)
      m = jnp.repeat(mask, c, axis=0)
      # [c, l] -> [b * c, l]
      tgt = jnp.tile(cand_ids, (b, 1))
      tmask = jnp.tile(cand_mask, (b, 1))
      logits = model.apply({"params": params}, h, m, t5_lib.shift_right(tgt, 0, 0), tmask,
                           method=CaptionT5.decode)
      logp = jax.nn.log_softmax(logits, axis=-1)
      # [b * c, l, vocab] -> [b * c, l]
      tok = jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
      # [b * c] -> [b, c]
      return (tok * tmask).sum(-1).reshape(b, c)

    return {"encode": encode, "greedy": greedy, "beam": beam, "sample": sample, "rank": rank}

  @functools.cached_property
  def _jitted(self):
    p = self._programs

    # Each program is checked against free memory before it first runs (one line if it cannot fit).
    def checked(name, what, static_argnums=()):
      return memory.FitChecked(jax.jit(p[name], static_argnums=static_argnums), self.config,
                               what=f"evaluation's {what}", static_argnums=static_argnums)

    return {"encode": checked("encode", "encoder"), "greedy": checked("greedy", "greedy decoder"),
            "beam": checked("beam", "beam search", 3),
            "sample": checked("sample", "sampler", (4, 5, 6)), "rank": checked("rank", "rank classifier")}

  def eval_steps(self) -> dict[str, task_lib.EvalStep]:
    """Evaluation's caption program (encode, then beam search or greedy decoding) and the sampler
    that draws pseudo-captions or re-ranking candidates (``eval.rerank`` / ``pseudo`` settings)."""
    p, ev, rr = self._programs, self.config.eval, self.config.eval.rerank
    visual_key = "features" if self.features_shape else "frames"
    shapes = {k: v for k, v in self.example_shapes().items()
              if k in (visual_key, "frame_mask", "input_ids", "attention_mask")}
    beams = int(ev.beam_size)

    def encode(params, batch):
      return p["encode"](params, {visual_key: batch[visual_key]}, batch["frame_mask"], batch["input_ids"],
                         batch["attention_mask"])

    def caption(params, batch):
      hidden, mask = encode(params, batch)
      return p["beam"](params, hidden, mask, beams) if beams > 1 else p["greedy"](params, hidden, mask)

    num_samples = max(1, int(rr.candidates) or 4)

    def sample(params, batch):
      hidden, mask = encode(params, batch)
      return p["sample"](params, hidden, mask, jax.random.PRNGKey(0), num_samples, float(rr.top_p),
                         float(rr.temperature))

    size = int(ev.batch_size)
    return {"eval": task_lib.EvalStep(caption, shapes, size, f"{'beam search' if beams > 1 else 'greedy'} "
                                      f"captions ({beams} beam{'s' * (beams > 1)})"),
            "sample": task_lib.EvalStep(sample, shapes, size, f"{num_samples} nucleus samples per clip")}

  def _encoder_inputs(self, batch: dict, task: str, drafts: Optional[list[str]] = None,
                      concepts: Optional[list] = None):
    texts = []
    concepts = self.batch_concepts(batch) if concepts is None else concepts
    for i in range(len(batch["video_id"])):
      th = thoughts_lib.build_thoughts(
          batch["metadata"][i], batch["subtitle"][i], self.thought_cfg,
          concepts=concepts[i],
          draft=drafts[i] if drafts else None, rng=None)
      texts.append(thoughts_lib.encoder_text(task, th))
    return self.tokenizer.encode_batch(texts, self.config.text.max_input_len)

  def predict(self, params, batch: dict, tasks: Sequence[str] = ("caption", "classify", "tags"),
              frame_mask: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Runs every task on one batch of decoded examples (host-side)."""
    j, ev = self._jitted, self.config.eval
    visual = {k: np.asarray(batch[k]) for k in ("frames", "features") if k in batch}
    fmask = jnp.asarray(batch["frame_mask"] if frame_mask is None else frame_mask, jnp.int32)
    out: dict[str, Any] = {}
    concepts = self.batch_concepts(batch)  # once for every task (a CLIP forward over the frames)
    if "concepts" in self.thought_cfg.sources:
      out["concepts"] = concepts

    def enc(task, drafts=None):
      ids, mask = self._encoder_inputs(batch, task, drafts, concepts)
      return j["encode"](params, visual, fmask, jnp.asarray(ids), jnp.asarray(mask))

    def generate(hidden, mask):
      if ev.beam_size > 1:
        toks, _ = j["beam"](params, hidden, mask, int(ev.beam_size))
        toks = np.asarray(toks)[:, 0]  # best beam: [b, max_len]
      else:
        toks, _ = j["greedy"](params, hidden, mask)
      return self.tokenizer.decode_batch(np.asarray(toks))

    if "caption" in tasks:
      hidden, mask = enc("caption")
      caps = generate(hidden, mask)
      out["draft"] = caps
      if "draft" in self.thought_cfg.sources and ev.refine:
        hidden, mask = enc("caption", drafts=caps)
        caps = generate(hidden, mask)
      if self.rerank_candidates() > 0:
        out["model_caption"] = caps
        out["candidates"] = self.ranked_candidates(batch, self.caption_candidates(params, hidden, mask))
        caps = [c[0]["caption"] if c else "" for c in out["candidates"]]
      out["caption"] = caps
    if "classify" in tasks and self.class_names:
      hidden, mask = enc("classify")
      out["class_generated"] = generate(hidden, mask)
      ids, cmask = self.tokenizer.encode_batch(self.class_names, self.config.text.max_target_len)
      out["class_scores"] = np.asarray(j["rank"](params, hidden, mask, jnp.asarray(ids),
                                                 jnp.asarray(cmask)))
    if "tags" in tasks:
      hidden, mask = enc("tags")
      out["tags"] = generate(hidden, mask)
    return out

  def answer_questions(self, params, batch: dict, pairs: Sequence[Sequence[dict]]) -> list[list[str]]:
    """The generated answer to each QA pair of each example (``pairs[i]``: example ``i``'s,
    :mod:`t5video.data.qa`), greedy; the encoder reads the question, its options and the thoughts."""
    from t5video.data import qa as qa_lib  # pylint: disable=g-import-not-at-top
    j = self._jitted
    visual = {k: np.asarray(batch[k]) for k in ("frames", "features") if k in batch}
    fmask = jnp.asarray(batch["frame_mask"], jnp.int32)
    concepts = self.batch_concepts(batch)
    thoughts = [thoughts_lib.build_thoughts(batch["metadata"][i], batch["subtitle"][i], self.thought_cfg,
                                            concepts=concepts[i], draft=None, rng=None)
                for i in range(len(batch["video_id"]))]
    out: list[list[str]] = [[] for _ in pairs]
    for k in range(max((len(p) for p in pairs), default=0)):
      texts = [f"{qa_lib.prompt(p[k])} {th}".strip() if k < len(p) else th for p, th in zip(pairs, thoughts)]
      ids, mask = self.tokenizer.encode_batch(texts, self.config.text.max_input_len)
      hidden, hmask = j["encode"](params, visual, fmask, jnp.asarray(ids), jnp.asarray(mask))
      toks, _ = j["greedy"](params, hidden, hmask)
      for i, answer in enumerate(self.tokenizer.decode_batch(np.asarray(toks))):
        if k < len(pairs[i]):
          out[i].append(answer)
    return out

  def caption_candidates(self, params, hidden, mask, *, source: Optional[str] = None,
                         num: Optional[int] = None, seed: Optional[int] = None
                         ) -> list[list[tuple[str, float]]]:
    """``num`` candidate captions per example with their length-normalised log-probability.

    ``source`` is 'beam' (the ``num`` best beams) or 'sample' (``num`` top-p
    samples, ``eval.rerank.top_p`` / ``temperature``, seeded by ``seed``);
    both default to ``eval.rerank``. Duplicates are kept once, at their best
    score; hypotheses a tiny vocabulary could not fill (score ``-inf``) are
    dropped. This is also how pseudo-labels are drawn.
    """
    r = self.config.eval.rerank
    source = source or r.source
    num = int(num or r.candidates or 1)
    j = self._jitted
    if source == "beam":
      toks, scores = j["beam"](params, hidden, mask, num)
    elif source == "sample":
      rng = jax.random.PRNGKey(int(r.seed if seed is None else seed))
      toks, scores = j["sample"](params, hidden, mask, rng, num, float(r.top_p), float(r.temperature))
    else:
      raise ValueError(f"eval.rerank.source must be 'beam' or 'sample', got {source!r}")
    toks, scores = np.asarray(toks), np.asarray(scores)  # [b, num, len], [b, num]
    out = []
    for row_toks, row_scores in zip(toks, scores):
      best: dict[str, float] = {}
      for text, score in zip(self.tokenizer.decode_batch(row_toks), row_scores):
        if np.isfinite(score) and score > best.get(text, -np.inf):
          best[text] = float(score)
      out.append(sorted(best.items(), key=lambda kv: -kv[1]))
    return out

  def video_text_similarity(self, batch: dict, texts: list[list[str]]) -> list[np.ndarray]:
    """cos(video, text) under the video-text CLIP(s) for each example's own texts (mean over folds)."""
    if "frames" not in batch:
      raise ValueError("eval.rerank needs decoded frames; it is not available when training on "
                       "cached features (data.features_dir)")
    flat = sorted({t for row in texts for t in row})
    if not flat:
      return [np.zeros((0,), np.float32) for _ in texts]
    scorers = self.clip_scorers(purpose="eval.rerank.candidates > 0")
    frames = np.asarray(batch["frames"])
    # [b, n]: every example against every text, averaged over the CLIPs.
    sims = np.mean([s.scores(s.fit_frames(frames), flat) for s in scorers], axis=0)
    index = {t: i for i, t in enumerate(flat)}
    return [sims[b, [index[t] for t in row]] if row else np.zeros((0,), np.float32)
            for b, row in enumerate(texts)]

  def ranked_candidates(self, batch: dict, candidates: list[list[tuple[str, float]]]
                        ) -> list[list[dict[str, float]]]:
    """Re-ranks candidates by ``log-prob + eval.rerank.weight * cos(video, caption)``, best first."""
    weight = float(self.config.eval.rerank.weight)
    sims = self.video_text_similarity(batch, [[c for c, _ in row] for row in candidates])
    ranked = []
    for row, sim in zip(candidates, sims):
      items = [{"caption": c, "logprob": lp, "clip": float(s), "score": lp + weight * float(s)}
               for (c, lp), s in zip(row, sim)]
      ranked.append(sorted(items, key=lambda d: -d["score"]))
    return ranked


  def caption_files(self, params, paths: Sequence[str]) -> list[dict[str, Any]]:
    """Caption, class and tags for a user's own video files (``t5video caption``)."""
    records = [VideoRecord(video_id=f"user-file:{i}:{os.path.basename(p)}", path=os.path.abspath(p), split="user")
               for i, p in enumerate(paths)]
    loader = pipeline.make_loader(
        records, transform=pipeline.VideoDecodeTransform(self._eval_spec(), train=False, seed=0),
        batch_size=min(len(records), self.config.eval.batch_size), seed=0, shuffle=False,
        num_epochs=1, shard_index=0, shard_count=1, worker_count=0, drop_remainder=False,
        pad_to_batch=True, read_threads=1, extra_transforms=self.frame_transforms())
    by_path = {}
    for batch in loader:
      pred = self.predict(params, batch)
      for i in range(len(batch["path"])):
        if int(batch["index"][i]) < 0:
          continue  # padding slot
        path = paths[int(batch["index"][i])]
        if not bool(batch["valid"][i]):
          by_path[path] = {"path": path, "error": batch["failure"][i]}
          continue
        scores = pred.get("class_scores")
        by_path[path] = {
            "path": path, "caption": pred["caption"][i],
            "class": self.class_names[int(np.argmax(scores[i]))] if scores is not None else "",
            "tags": sorted(thoughts_lib.parse_tags(pred["tags"][i])),
        }
    return [by_path[p] for p in paths]

