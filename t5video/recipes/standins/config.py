"""The stand-ins' config schema: every key with its default, the checks, and
what the build's cache is keyed by.

Two pretraining stages run one after the other in one process (see
:mod:`.pretrain` for why not through :mod:`t5video.train.trainer`):

* ``clip``: a CLIP (both towers) trained contrastively on rendered stills;
* ``t5``: a T5 trained with span corruption on the synthetic world's text.

Each stage's steps, batch size and peak learning rate live in its own section;
``optim`` (the engine's section) holds what both share: AdamW, the schedule,
weight decay, clipping and the Adam moments. The engine's other sections
(``mesh``, ``sharding``, ``train``, ``init_from``) are present because every
t5video config has them; the build reads only ``train.dtype`` from them.

The defaults are the sizes of the demo's CaptionT5 (``configs/captiont5/
synthetic.py``: ``model.clip`` and ``model.t5``): 64x64 images, patch 16,
128 wide, 2 layers, so that the demo can start from the stand-ins.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_collections

from t5video import config as config_lib

# Bump when the build writes something different for the same config; the cache
# key includes it (and the synthetic generator's version).
BUILD_VERSION = 1

# Sections whose keys are free-form: model sizes (HF config fields).
OPEN_SECTIONS = ("clip.vision", "clip.text", "t5.model")

# The attributes zero-shot accuracy is measured on (held-out single-object stills;
# 'count' on all held-out stills).
ATTRIBUTES = ("colour", "shape", "size", "background", "count")


def base_config() -> ml_collections.ConfigDict:
  """Every key of a stand-ins config with its default (the engine's sections included)."""
  from t5video.train import trainer  # pylint: disable=g-import-not-at-top
  c = trainer.default_config()
  c.task = "standins"
  c.seed = 0
  c.cache_dir = ""                  # '' = $T5VIDEO_STANDINS_CACHE, else ~/.cache/t5video/standins
  c.optim.update(name="adamw", schedule="cosine", weight_decay=0.01, clip_norm=1.0, b1=0.9, b2=0.98)

  # Rendered stills: the synthetic world's scenes (1-3 objects over a textured
  # background, camera noise), drawn at one instant, with still captions.
  c.stills = dict(
      num_train=12000,
      num_heldout=1500,
      size=64,                      # rendered square (= clip.vision.image_size)
      backgrounds=(),               # () = every kind the generator draws
      max_distractors=2,            # other objects beside the first (0 to 2)
      captions_per_still=2,         # caption variants drawn per still; a step picks one
      twins=True,                   # training stills come in minimal pairs (the first object's shape
                                    # or the background changed), kept in the same batch: hard negatives
      workers=2,                    # processes drawing stills while the T5 trains (0: in this process);
                                    # the stills do not depend on it
  )
  # Text for T5: captions, queries and subtitles of clips sampled (not rendered)
  # from the synthetic world, plus still captions.
  c.text = dict(
      num_clips=3000,
      heldout_clips=300,
      still_captions=6000,          # still captions added to the T5 corpus
      vocab_size=512,               # SentencePiece pieces (fewer when the text has fewer)
      extra_ids=100,                # T5 sentinels <extra_id_0..k>
  )
  c.clip = dict(
      vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, image_size=64, patch_size=16, projection_dim=128,
                  hidden_act="quick_gelu"),
      # Narrower than the vision tower, as in CLIP (ViT-B/16: 768 vs 512); the text is
      # twice as long as the 17 image tokens and this halves its cost.
      text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, projection_dim=128,
                hidden_act="quick_gelu"),
      projection_dim=128,
      bpe_vocab=1000,               # the CLIP BPE tokenizer trained on the still captions
      steps=500,
      batch_size=64,
      learning_rate=1e-3,
      warmup_steps=50,
  )
  c.t5 = dict(
      model=dict(d_model=128, d_kv=32, d_ff=512, num_layers=2, num_decoder_layers=2, num_heads=4,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1,
                 relative_attention_num_buckets=32, relative_attention_max_distance=64),
      pretrain_dropout=0.0,         # dropout while pretraining (model.dropout_rate is exported)
      raw_length=48,                # tokens per packed chunk before corruption
      noise_density=0.15,
      mean_noise_span_length=3.0,
      steps=300,
      batch_size=32,
      learning_rate=2e-3,
      warmup_steps=30,
  )
  c.eval = dict(
      # Zero-shot prompts; '{}' is the attribute's name (count: a number word).
      templates=dict(colour="a photo of a {} object", shape="a photo of a {}",
                     size="a photo of a {} object", background="a photo of a {} background",
                     count="a photo of {} objects"),
      batch_size=256,
  )
  c.log_every = 50
  c.xla_fast_compile = False        # XLA optimisation level 0: compiles faster, runs slower (tiny configs)
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """The engine's checks, the locked schema, then value checks; raises ValueError naming the key."""
  from t5video.train import trainer  # pylint: disable=g-import-not-at-top
  trainer.validate_config(config)
  config_lib.check_keys(config, base_config(), open_sections=OPEN_SECTIONS)
  s, t, c, t5 = config.stills, config.text, config.clip, config.t5
  for key, value, low in (("stills.num_train", s.num_train, 2), ("stills.num_heldout", s.num_heldout, 1),
                          ("stills.captions_per_still", s.captions_per_still, 1),
                          ("text.num_clips", t.num_clips, 1), ("text.heldout_clips", t.heldout_clips, 1),
                          ("text.vocab_size", t.vocab_size, 16), ("text.extra_ids", t.extra_ids, 1),
                          ("clip.steps", c.steps, 1), ("clip.batch_size", c.batch_size, 2),
                          ("t5.steps", t5.steps, 1), ("t5.batch_size", t5.batch_size, 1),
                          ("t5.raw_length", t5.raw_length, 4), ("eval.batch_size", config.eval.batch_size, 1)):
    if value < low:
      raise ValueError(f"{key} must be >= {low}, got {value}")
  if s.twins and c.batch_size % 2:
    raise ValueError(f"clip.batch_size must be even with stills.twins (pairs share a batch), got {c.batch_size}")
  if c.batch_size > s.num_train:
    raise ValueError(f"clip.batch_size ({c.batch_size}) exceeds stills.num_train ({s.num_train})")
  if not 0 <= s.max_distractors <= 2:
    raise ValueError(f"stills.max_distractors must be in [0, 2], got {s.max_distractors}")
  if s.size != c.vision.get("image_size", s.size):
    raise ValueError(f"stills.size ({s.size}) must equal clip.vision.image_size ({c.vision.image_size})")
  if not 0 < t5.noise_density < 1 or t5.mean_noise_span_length < 1:
    raise ValueError("t5.noise_density must lie in (0, 1) and t5.mean_noise_span_length be >= 1, got "
                     f"{t5.noise_density}, {t5.mean_noise_span_length}")
  for key in ATTRIBUTES:
    if config.eval.templates[key].count("{}") != 1:
      raise ValueError(f"eval.templates.{key} must hold one '{{}}', got {config.eval.templates[key]!r}")


def cache_root(config: ml_collections.ConfigDict) -> str:
  """``config.cache_dir``, else ``$T5VIDEO_STANDINS_CACHE``, else ``~/.cache/t5video/standins``."""
  return (config.cache_dir or os.environ.get("T5VIDEO_STANDINS_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "t5video", "standins"))


def cache_key(config: ml_collections.ConfigDict) -> str:
  """12 hex digits of the config (without ``cache_dir``) and the build and generator versions."""
  from t5video.data import synthetic  # pylint: disable=g-import-not-at-top
  d = json.loads(config.to_json_best_effort())
  for key in ("cache_dir", "log_every"):  # where and how verbosely, not what
    d.pop(key, None)
  d.get("stills", {}).pop("workers", None)
  d["_versions"] = {"build": BUILD_VERSION, "synthetic": synthetic.GENERATOR_VERSION}
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
