r"""Stand-ins for a pretrained CLIP and T5, pretrained here on the synthetic world.

Writes ``DIR/clip/`` (a CLIP trained contrastively on captioned stills) and
``DIR/t5/`` (a T5 trained with span corruption on the world's text), Hugging
Face directories that ``transformers`` and ``t5video.models.load_hf`` load, and
``DIR/standins.json`` (zero-shot accuracy on held-out stills, held-out
span-corruption loss, their controls)::

  t5video standins --out data_cache/standins --config configs/standins/default.py

Sizes are those of the demo's CaptionT5 (configs/captiont5/synthetic.py): 64x64
images, patch 16, 128 wide, 2 layers. Built once (a few minutes on 2 CPU cores)
and cached under ``~/.cache/t5video/standins/<key>/`` (``$T5VIDEO_STANDINS_CACHE``
or ``--config.cache_dir`` elsewhere); the same config returns at once.

``:tiny`` shrinks everything for tests (seconds; meaningless numbers).
Notes and figures: docs/standins.md.
"""

from t5video.recipes import standins


def get_config(arg=None):
  c = standins.base_config()
  if arg == "tiny":
    c.stills.update(num_train=96, num_heldout=48, captions_per_still=1, workers=0)
    c.text.update(num_clips=60, heldout_clips=12, still_captions=40, vocab_size=200, extra_ids=16)
    # One layer per stack: compiling, not computing, is what a tiny build spends its time on.
    c.clip.vision.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         projection_dim=16)
    c.clip.text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       projection_dim=16)
    c.clip.update(projection_dim=16, bpe_vocab=600, steps=3, batch_size=16, warmup_steps=1)
    c.t5.model.update(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2)
    c.t5.update(steps=3, batch_size=8, warmup_steps=1, raw_length=24)
    c.eval.batch_size = 32
    c.log_every = 1
    c.xla_fast_compile = True
  elif arg:
    raise ValueError(f"configs/standins/default.py: unknown arg {arg!r} (known: tiny)")
  return c
