"""Trainable share of every PEFT method, counted on CaptionT5 at the recipe's scale.

The model is built through the recipe's own path (``configs/captiont5/msrvtt.py``: CLIP ViT-B/16 +
FLAN-T5-base, 12 frames at 224², a 2-layer temporal transformer, LoRA rank 16 on q/v of every T5
attention), with only the two checkpoints' ``config.json`` written here (their published sizes), so
nothing is downloaded; parameters are shapes only (``jax.eval_shape``). For each method of
``t5video.models.peft`` it prints the trainable parameters (what the optimizer keeps state for:
``peft.trainable_regex``, the same regex the trainer uses) and their share of the whole model, and
what each method trains beyond the bridge that all of them train ("own"); with
``--workdir`` a trained run's own model is counted as well (its config, its method's sizes).

  python benchmarks/peft_share.py
  python benchmarks/peft_share.py --workdir runs/v8_demo_hash_s0     # the demo's scale
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Published sizes (config.json of openai/clip-vit-base-patch16 and google/flan-t5-base).
CLIP_B16 = {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 512,
            "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                              "num_attention_heads": 12, "image_size": 224, "patch_size": 16,
                              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "num_channels": 3},
            "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                            "num_attention_heads": 8, "vocab_size": 49408, "max_position_embeddings": 77,
                            "hidden_act": "quick_gelu"}}
FLAN_T5_BASE = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": 32128,
                "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12, "num_decoder_layers": 12,
                "num_heads": 12, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "feed_forward_proj": "gated-gelu",
                "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def count(config, vocab_size: int) -> dict[str, tuple[int, int]]:
  """``{method: (trainable, total)}`` for every PEFT method on ``config``'s model."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from t5video.models import captiont5, peft
  from t5video.recipes.captiont5 import config as cfg_lib
  from t5video.train import optim

  out = {}
  for method in peft.METHODS:
    c = config.copy_and_resolve_references()
    c.peft.method = method
    model_cfg = cfg_lib.build_model_config(c, vocab_size)
    model = captiont5.CaptionT5(model_cfg)
    d, t = c.data, c.text
    dummy = dict(input_ids=jnp.zeros((1, t.max_input_len), jnp.int32),
                 attention_mask=jnp.ones((1, t.max_input_len), jnp.int32),
                 decoder_input_ids=jnp.zeros((1, t.max_target_len), jnp.int32),
                 pixel_values=jnp.zeros((1, d.num_frames, d.size, d.size, 3), jnp.float32),
                 frame_mask=jnp.ones((1, d.num_frames), jnp.int32))
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), **dummy)["params"]))
    regex = "" if method == "full" else peft.trainable_regex(
        method, last_n=c.peft.last_n, num_layers=model_cfg.t5.num_layers,
        num_decoder_layers=model_cfg.t5.num_decoder_layers, bridge=c.peft.bridge)
    labels = optim.param_labels(params, optim.OptimConfig(trainable=regex))
    total, trainable = optim.count_params(params, labels)
    out[method] = (trainable, total)
  return out


def table(counts: dict[str, tuple[int, int]]) -> str:
  """Trainable, total and share; 'own' is what a method trains beyond the bridge (the temporal
  module and the visual projection, which every method but 'full' trains too) and its share."""
  bridge = counts["bridge"][0]
  lines = [f"{'method':<10}{'trainable':>14}{'total':>14}{'share':>9}{'own':>13}{'own share':>11}"]
  for m, (tr, tot) in counts.items():
    own = tr - bridge if m not in ("full", "bridge") else 0
    lines.append(f"{m:<10}{tr:>14,}{tot:>14,}{100 * tr / tot:>8.2f}%"
                 + (f"{own:>13,}{100 * own / tot:>10.2f}%" if own else f"{'':>13}{'':>11}"))
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="", help="also count a trained CaptionT5 run's model")
  args = parser.parse_args()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("msrvtt", os.path.join(root, "configs/captiont5/msrvtt.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config("stage=2")
  with tempfile.TemporaryDirectory() as tmp:
    for name, cfg in (("clip", CLIP_B16), ("t5", FLAN_T5_BASE)):
      os.makedirs(os.path.join(tmp, name))
      with open(os.path.join(tmp, name, "config.json"), "w") as f:
        json.dump(cfg, f)
    config.model.clip_init = os.path.join(tmp, "clip")
    config.model.t5_init = os.path.join(tmp, "t5")
    print(f"CaptionT5 at the recipe's scale (configs/captiont5/msrvtt.py: CLIP ViT-B/16 + FLAN-T5-base, "
          f"{config.data.num_frames} frames, LoRA rank {config.peft.lora_rank}, adapters {config.peft.adapter_dim}, "
          f"prompt {config.peft.prompt_length}, last {config.peft.last_n} blocks):")
    print(table(count(config, FLAN_T5_BASE["vocab_size"])))
  if args.workdir:
    from t5video import config as config_lib
    from t5video.recipes.captiont5 import task as task_lib
    run = config_lib.load_run_config(args.workdir)
    vocab = task_lib.CaptionT5Task(run).tokenizer.vocab_size
    print(f"\n{args.workdir} (its own config and sizes):")
    print(table(count(run, vocab)))


if __name__ == "__main__":
  main()
