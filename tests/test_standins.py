"""The stand-ins (`t5video standins`) on the tiny config: both directories load with
transformers and through load_hf with equal logits, the cache answers without
training again, and standins.json holds the two figures."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from t5video import config as config_lib  # noqa: E402
from t5video.data import synthetic  # noqa: E402
from t5video.models import clip as clip_lib  # noqa: E402
from t5video.models import hf  # noqa: E402
from t5video.models import t5 as t5_lib  # noqa: E402
from t5video import cli  # noqa: E402
from t5video.recipes import standins  # noqa: E402
from t5video.recipes.standins import cache as cache_lib  # noqa: E402
from t5video.recipes.standins import data as data_lib  # noqa: E402
from t5video.recipes.standins.pretrain import Jit  # noqa: E402

TINY = "configs/standins/default.py:tiny"


def _config(cache_dir):
  c = config_lib.load_config_file(TINY)
  c.cache_dir = str(cache_dir)
  return c


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The tiny stand-ins, built once into a fresh cache."""
  cache_dir = tmp_path_factory.mktemp("standins_cache")
  path = standins.build(_config(cache_dir), log=lambda line: None)
  return cache_dir, path


def test_clip_loads_with_transformers_and_load_hf(built):
  _, path = built
  clip_dir = os.path.join(path, "clip")
  tok = transformers.AutoTokenizer.from_pretrained(clip_dir)
  assert type(tok).__name__ == "CLIPTokenizer"
  torch_model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
  module, params = hf.load_hf(clip_dir)
  assert isinstance(module, clip_lib.CLIPModel)

  texts = ["a photo of a red circle", "two shapes on a striped background"]
  enc = tok(texts, padding="max_length", max_length=module.text_config.max_position_embeddings,
            return_tensors="np")
  size = module.vision_config.image_size
  pixels = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32)  # NHWC
  with torch.no_grad():
    ref = torch_model(input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"]),
                      pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2))).logits_per_image.numpy()
  ours = Jit(lambda p, i, x, m: module.apply({"params": p}, i, x, m).logits_per_image, fast_compile=True)(
      params, enc["input_ids"], pixels, enc["attention_mask"])
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=1e-4)
  # The tokenizer t5video's ViFi-CLIP and CaptionT5 read (the same ids, end token pooled).
  from t5video.data.tokenizer import ClipTextTokenizer  # pylint: disable=g-import-not-at-top
  ids, _ = ClipTextTokenizer(clip_dir)(texts[:1], 16)
  assert ids[0].tolist()[: int(enc["attention_mask"][0].sum())] == enc["input_ids"][0][
      : int(enc["attention_mask"][0].sum())].tolist()


def test_t5_loads_with_transformers_and_load_hf(built):
  _, path = built
  t5_dir = os.path.join(path, "t5")
  tok = transformers.AutoTokenizer.from_pretrained(t5_dir)
  assert type(tok).__name__ in ("T5Tokenizer", "T5TokenizerFast")
  config = _config(built[0])
  extra = int(config.text.extra_ids)
  assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1  # T5's sentinel layout
  assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
  assert tok.convert_tokens_to_ids(f"<extra_id_{extra - 1}>") == len(tok) - extra
  torch_model = transformers.T5ForConditionalGeneration.from_pretrained(t5_dir).eval()
  module, params = hf.load_hf(t5_dir)
  assert isinstance(module, t5_lib.T5ForConditionalGeneration)
  assert module.config.vocab_size >= len(tok)

  inputs = tok(["a red circle <extra_id_0> to the left"], return_tensors="np")
  labels = tok(["<extra_id_0> moves <extra_id_1>"], return_tensors="np")["input_ids"]
  decoder_ids = np.asarray(t5_lib.shift_right(labels, 0, 0))
  with torch.no_grad():
    ref = torch_model(input_ids=torch.tensor(inputs["input_ids"]),
                      attention_mask=torch.tensor(inputs["attention_mask"]),
                      decoder_input_ids=torch.tensor(decoder_ids)).logits.numpy()
  ours = Jit(lambda p, i, m, d: module.apply({"params": p}, input_ids=i, attention_mask=m, decoder_input_ids=d).logits,
             fast_compile=True)(params, inputs["input_ids"], inputs["attention_mask"], decoder_ids)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=1e-4)


def test_cache_returns_the_same_dir_without_training(built, monkeypatch, tmp_path, capsys):
  cache_dir, path = built

  def no_training(*args, **kwargs):
    raise AssertionError("the cache should have answered")

  monkeypatch.setattr(cache_lib, "_build_into", no_training)
  assert standins.build(_config(cache_dir), log=lambda line: None) == path
  # The command: the same cache entry, copied to --out, with the figures printed and saved.
  out = tmp_path / "standins"
  assert cli.main(["standins", "--config", TINY, f"--config.cache_dir={cache_dir}", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "cached" in printed and "zero-shot" in printed and "span-corruption loss" in printed
  result = json.loads((out / "standins.json").read_text())
  for name in ("colour", "shape"):
    assert 0.0 <= result["clip"]["zero_shot"][name]["top1"] <= 1.0
    assert result["clip"]["zero_shot"][name]["chance"] == pytest.approx(1 / 8, abs=1e-3)
  assert np.isfinite(result["t5"]["heldout_loss"]) and result["t5"]["heldout_loss"] > 0
  for part in ("clip", "t5"):
    assert os.path.isfile(out / part / "config.json") and os.path.isfile(out / part / "model.safetensors")
  # Another config is another key.
  other = _config(cache_dir)
  other.clip.steps = 4
  assert standins.cache_key(other) != standins.cache_key(_config(cache_dir))


def test_span_corruption_matches_t5():
  """Noise density and span count as T5 sets them; inputs and targets rebuild the chunk."""
  rng = np.random.default_rng(0)
  mask = data_lib.random_spans_noise_mask(100, 0.15, 3.0, rng)
  assert mask.sum() == 15 and not mask[0]
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  assert starts.sum() == 5
  chunks = np.arange(10, 58, dtype=np.int32).reshape(2, 24)
  sentinels = [99 - k for k in range(8)]
  inputs, targets = data_lib.span_corruption(chunks, noise_density=0.15, mean_noise_span_length=3.0,
                                             sentinels=sentinels, eos_id=1, seed=0)
  for row, inp, tgt in zip(chunks, inputs, targets):
    assert inp[-1] == 1 and tgt[-1] == 1 and tgt[0] == 99
    rebuilt, t = [], list(tgt[:-1])
    for tok in inp[:-1]:  # each sentinel in the input is followed in the target by what it replaced
      if tok in sentinels:
        i = t.index(tok)
        j = next((k for k in range(i + 1, len(t)) if t[k] in sentinels), len(t))
        rebuilt += t[i + 1:j]
      else:
        rebuilt.append(tok)
    assert rebuilt == row.tolist()


def test_stills_do_not_depend_on_workers(tmp_path):
  """Worker processes draw the same stills (and twins) as the build's own process."""
  config = _config(tmp_path)
  config.stills.update(num_train=12, num_heldout=4, twins=True)
  config.text.still_captions = 3
  out = {}
  # pylint: disable=protected-access
  for workers in (0, 2):
    with cache_lib._executor(workers) as pool:
      jobs = cache_lib._submit_stills(config, pool)
      out[workers] = (cache_lib._gather(jobs["train"]), jobs["still_texts"].result())
  # pylint: enable=protected-access
  (stills0, pixels0), texts0 = out[0]
  (stills2, pixels2), texts2 = out[2]
  np.testing.assert_array_equal(pixels0, pixels2)
  assert stills0 == stills2 and texts0 == texts2 and len(stills0) == 12
  # Pairs differ in exactly one thing: the first object's shape or the background.
  for a, b in zip(stills0[0::2], stills0[1::2]):
    assert (a.spec.key.shape != b.spec.key.shape) != (a.background != b.background)


def test_still_captions_name_what_is_drawn():
  stills = data_lib.sample_stills(20, 3)
  assert all(s.spec.events == () and s.spec.num_frames == 1 for s in stills)
  pixels = data_lib.render_stills(stills)
  assert pixels.shape == (20, 64, 64, 3) and pixels.dtype == np.uint8
  for still, caps in zip(stills, data_lib.still_captions(stills, 2, 0)):
    key = still.spec.key
    # Every caption names the first object by a colour word or a shape word of its own.
    words = synthetic.COLOUR_WORDS[key.colour] + synthetic.SHAPE_WORDS[key.shape]
    assert all(any(w in c for w in words) for c in caps)


def test_standins_spec_resolves_and_extracts_features_at_a_frame_rate(built, monkeypatch, tmp_path,
                                                                      capsys):
  """``standins:CONFIG`` names the cached stand-in wherever a CLIP directory is taken:
  ``t5video extract-features --clip standins:... --fps 2`` here (one frame per 0.5 s)."""
  cache_dir, path = built

  def no_training(*args, **kwargs):
    raise AssertionError("the cache should have answered")

  monkeypatch.setattr(cache_lib, "_build_into", no_training)
  monkeypatch.setenv("T5VIDEO_STANDINS_CACHE", str(cache_dir))
  assert standins.resolve(f"standins:{TINY}", "t5") == os.path.join(path, "t5")
  assert standins.resolve("/some/hf/dir", "clip") == "/some/hf/dir"
  with pytest.raises(ValueError, match="'clip' or 't5'"):
    standins.resolve(f"standins:{TINY}", "standins.json")
  root = str(tmp_path / "videos")
  assert cli.main(["data", "synthetic", "--out", root, "--num-videos", "3", "--seed", "0",
                   "--min-seconds", "1.0", "--max-seconds", "2.0"]) == 0
  out = str(tmp_path / "features")
  capsys.readouterr()
  assert cli.main(["extract-features", "--layout", "generic", "--root", root, "--split", "train",
                   "--out", out, "--clip", f"standins:{TINY}", "--fps", "2", "--max-frames", "6",
                   "--size", "64", "--layers", "0,1", "--tokens", "all"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["complete"] and summary["videos_per_s"] > 0 and summary["frames_per_s"] > 0
  shard = os.path.join(out, "shard-00000")
  mask = np.load(os.path.join(shard, "frame_mask.npy"))                   # [videos, 6]
  times = np.load(os.path.join(shard, "timestamps.npy"))
  assert mask.shape[1] == 6 and 2 <= mask.sum(1).min() and mask.sum(1).max() <= 4  # 1-2 s at 2 fps
  taken = times[0][mask[0] > 0]
  np.testing.assert_allclose(np.diff(taken), 0.5, atol=0.06)
  tokens = np.load(os.path.join(shard, "layer_1.npy"))
  assert tokens.shape[1:] == (6, (64 // 16) ** 2 + 1, 32)                 # [videos, T, tokens, D]


def test_captiont5_standins_variant_starts_from_the_standin_directories(built, monkeypatch, tmp_path):
  """``configs/captiont5/synthetic.py:standins``: preparing the run resolves ``standins:`` to
  the cached directories, and the Task takes its towers' sizes and tokenizer from them."""
  from t5video.recipes import captiont5
  cache_dir, path = built
  monkeypatch.setattr(cache_lib, "_build_into", lambda *a, **k: pytest.fail("cache expected"))
  monkeypatch.setenv("T5VIDEO_STANDINS_CACHE", str(cache_dir))
  config = config_lib.load_config_file("configs/captiont5/synthetic.py:runlocal,standins")
  assert config.model.clip_init.startswith("standins:") and config.eval.rerank.candidates == 0
  with config.unlocked():
    config.model.clip_init = config.model.t5_init = f"standins:{TINY}"
    config.data.root = str(tmp_path / "data")
    config.data.num_videos = 24
  with pytest.raises(ValueError, match="resolved when the run is prepared"):
    captiont5.CaptionT5Task(config)
  prepared = captiont5.CaptionT5Task.prepare(config, str(tmp_path / "run"))
  assert prepared.model.clip_init == os.path.join(path, "clip")
  assert prepared.model.t5_init == os.path.join(path, "t5") and not prepared.stages
  task = captiont5.CaptionT5Task(prepared)
  assert task.model_config.t5.d_model == 32 and task.model_config.vision.hidden_size == 32
  assert task.tokenizer.vocab_size == transformers.AutoTokenizer.from_pretrained(
      os.path.join(path, "t5")).vocab_size


def test_vificlip_standins_variant_takes_towers_sizes_and_weights_from_the_standin(built, monkeypatch, tmp_path):
  """``configs/vificlip/synthetic.py:mean,tiny,standins``: preparing resolves ``standins:`` to the
  cached CLIP directory; the towers' sizes come from its config.json (model.vision / model.text
  that disagree are an error naming them), and its weights reach ViFi-CLIP through the loader a
  user's HF checkpoint takes; CaptionT5's vision tower from such a run has the stand-in's sizes."""
  import flax.linen as nn
  import jax
  from t5video.models import hf
  from t5video.recipes.vificlip import config as vificlip_config
  from t5video.recipes.vificlip.task import ViFiCLIPTask
  cache_dir, path = built
  monkeypatch.setattr(cache_lib, "_build_into", lambda *a, **k: pytest.fail("cache expected"))
  monkeypatch.setenv("T5VIDEO_STANDINS_CACHE", str(cache_dir))
  config = config_lib.load_config_file("configs/vificlip/synthetic.py:mean,tiny,standins")
  with config.unlocked():
    config.init_from.path = config.model.tokenizer = f"standins:{TINY}"
    config.data.root = str(tmp_path / "data")
    config.data.synthetic.num_videos = 24
  assert vificlip_config.vision_config(config).hidden_size == 32  # the tiny stand-in's width
  assert config.model.projection_dim == 0 and vificlip_config.projection_dim(config) == 16  # the stand-in's
  prepared = ViFiCLIPTask.prepare(config, str(tmp_path / "run"))
  assert prepared.init_from.path == prepared.model.tokenizer == os.path.join(path, "clip")
  assert prepared.model.vision.hidden_size == 32  # written into the run's config: it restores alone
  task = ViFiCLIPTask(prepared)
  hf_cfg = json.load(open(os.path.join(path, "clip", "config.json")))
  assert task.model_config.vision.hidden_size == hf_cfg["vision_config"]["hidden_size"]
  assert task.model_config.text.vocab_size == hf_cfg["text_config"]["vocab_size"]
  assert task.model_config.projection_dim == hf_cfg["projection_dim"]
  params = task.load_pretrained(nn.unbox(task.init_params(jax.random.PRNGKey(0))), prepared.init_from)
  _, clip_params = hf.load_hf(os.path.join(path, "clip"))
  np.testing.assert_array_equal(
      np.asarray(params["vision_model"]["embeddings"]["patch_embedding"]["kernel"]),
      np.asarray(clip_params["vision_model"]["embeddings"]["patch_embedding"]["kernel"]))
  np.testing.assert_array_equal(np.asarray(params["text_projection"]["kernel"]),
                                np.asarray(clip_params["text_projection"]["kernel"]))
  with prepared.unlocked():
    prepared.model.vision = {"hidden_size": 64}
  with pytest.raises(ValueError, match=r"model.vision: hidden_size=64 \(checkpoint: 32\)"):
    ViFiCLIPTask(prepared)


def test_captiont5_clip_stage_on_the_standin_keeps_its_tokenizer_and_sizes(built, monkeypatch, tmp_path):
  """``configs/captiont5/synthetic.py:vifi_standins``: the ViFi-CLIP stage fine-tunes the stand-in
  CLIP, keeping the stand-in's tokenizer (no SentencePiece model of its own), and CaptionT5's vision
  tower takes the stand-in's sizes from it."""
  from t5video.recipes import captiont5
  cache_dir, path = built
  monkeypatch.setattr(cache_lib, "_build_into", lambda *a, **k: pytest.fail("cache expected"))
  monkeypatch.setenv("T5VIDEO_STANDINS_CACHE", str(cache_dir))
  config = config_lib.load_config_file("configs/captiont5/synthetic.py:runlocal,vifi_standins")
  assert config.thoughts.clip_stage.config == "configs/vificlip/synthetic.py:mean,standins"
  with config.unlocked():
    config.thoughts.clip_stage.config = "configs/vificlip/synthetic.py:mean,tiny,standins"
    config.model.t5_init = f"standins:{TINY}"
    config.data.root = str(tmp_path / "data")
    config.data.num_videos = 24
  prepared = captiont5.CaptionT5Task.prepare(config, str(tmp_path / "run"))
  (stage,) = [dict(s) for s in prepared.stages]
  assert stage["config"] == "configs/vificlip/synthetic.py:mean,tiny,standins"
  assert "model" not in stage["overrides"]  # (an empty 'model' dict would replace the section)
  from t5video.train import stages as stages_lib
  stage_config = stages_lib.stage_config(stage)
  assert stage_config.model.tokenizer == f"standins:{TINY}" and stage_config.model.objective
  task = captiont5.CaptionT5Task(prepared)
  assert task.model_config.vision.hidden_size == 32  # the tiny stand-in's, from its config.json


def test_image_clip_concepts_equal_transformers(built):
  """Concepts from an HF image CLIP (``thoughts.concepts_clip``): each clip's embedding is its
  frames' normalised image embeddings averaged and normalised again; the similarities equal the
  same computation in transformers."""
  from t5video.recipes.captiont5 import concepts as concepts_lib
  _, path = built
  clip_dir = os.path.join(path, "clip")
  scorer = concepts_lib.ImageClipScorer(clip_dir, num_frames=3, batch_size=4)
  size = scorer.image_size
  frames = np.random.default_rng(0).integers(0, 256, size=(2, 3, size + 8, size, 3), dtype=np.uint8)
  vocab = ["red", "circle", "moves left", "striped background"]
  ours = scorer.scores(frames, vocab)  # [2, 4]

  torch_model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
  tok = transformers.AutoTokenizer.from_pretrained(clip_dir)
  square = frames[:, :, 4:4 + size]  # the centre square (no resize: the side is the CLIP's size)
  x = (square.astype(np.float32) / 255.0 - np.asarray(clip_lib.CLIP_MEAN)) / np.asarray(clip_lib.CLIP_STD)
  x = x.reshape((6, size, size, 3)).transpose(0, 3, 1, 2)  # [B*T, H, W, 3] -> [B*T, 3, H, W]
  enc = tok(vocab, padding="max_length", max_length=scorer.text_len, return_tensors="pt")
  with torch.no_grad():
    img = torch_model.get_image_features(pixel_values=torch.tensor(x, dtype=torch.float32))
    txt = torch_model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
  img = getattr(img, "pooler_output", img).numpy()
  txt = getattr(txt, "pooler_output", txt).numpy()
  img = img / np.linalg.norm(img, axis=-1, keepdims=True)
  video = img.reshape(2, 3, -1).mean(axis=1)  # [B*T, P] -> [B, T, P] -> [B, P]
  video /= np.linalg.norm(video, axis=-1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
  np.testing.assert_allclose(ours, video @ txt.T, atol=2e-4)
  assert concepts_lib.top_concepts(vocab, ours[0], 2) == [vocab[j] for j in np.argsort(-ours[0])[:2]]


def test_captiont5_concepts_from_the_standin_image_clip(built, monkeypatch, tmp_path):
  """``:concepts=image``: preparing the run resolves ``thoughts.concepts_clip`` to the stand-in
  CLIP's directory; every training clip gets that CLIP's similarities over the vocabulary, its
  top k, and in training a draw by similarity (distinct concepts of the vocabulary that vary from
  epoch to epoch; the top k with ``concept_train='top_k'``)."""
  from t5video.recipes import captiont5
  cache_dir, path = built
  monkeypatch.setattr(cache_lib, "_build_into", lambda *a, **k: pytest.fail("cache expected"))
  monkeypatch.setenv("T5VIDEO_STANDINS_CACHE", str(cache_dir))
  config = config_lib.load_config_file("configs/captiont5/synthetic.py:runlocal,concepts=image")
  assert config.thoughts.concepts_clip.startswith("standins:") and config.thoughts.sources[0] == "concepts"
  assert config.thoughts.clip_stage.folds == 1  # no cross-fitting: the image CLIP never saw the clips
  with config.unlocked():
    config.thoughts.concepts_clip = f"standins:{TINY}"
    config.data.root = str(tmp_path / "data")
    config.data.num_videos = 24
    config.thoughts.dropout = config.thoughts.drop_all = 0.0
    config.thoughts.concept_temperature = 1.0  # flat: the draws must differ
  prepared = captiont5.CaptionT5Task.prepare(config, str(tmp_path / "run"))
  assert prepared.thoughts.concepts_clip == os.path.join(path, "clip")
  task = captiont5.CaptionT5Task(prepared)
  task.workdir = str(tmp_path / "run")
  vocab = task.concept_vocabulary()
  concepts = task.concepts()
  train = task.records[prepared.data.train_split]
  assert set(concepts) == set(task.concept_sims) == {r.video_id for r in train}
  from t5video.data import decode
  (scorer,) = task.concept_scorers()
  assert scorer.num_frames == prepared.data.num_frames
  spec = decode.SamplingSpec(num_frames=scorer.num_frames, size=scorer.image_size)
  row = scorer.scores(decode.decode_video(train[0].path, spec).frames[None], vocab)[0]
  np.testing.assert_allclose(task.concept_sims[train[0].video_id], row, atol=1e-5)
  k = prepared.thoughts.top_k
  assert concepts[train[0].video_id] == [vocab[j] for j in np.argsort(-row, kind="stable")[:k]]

  ex = {"video_id": train[0].video_id, "captions": list(train[0].captions), "label": train[0].label,
        "tags": list(train[0].tags), "metadata": dict(train[0].metadata), "subtitle": train[0].subtitle,
        "frames": np.zeros((1,), np.uint8), "frame_mask": np.ones((1,), np.int32), "valid": True,
        "index": 0, "position": 0, "failure": "", "path": train[0].path}

  def inputs(t):  # the encoder's text of 8 epochs (captions only: the concepts are what varies)
    transform = t._text_transform(seed=0)  # pylint: disable=protected-access
    return {tuple(transform({**ex, "epoch": e})["input_ids"].tolist()) for e in range(8)}

  from t5video.recipes.captiont5 import concepts as concepts_lib
  cs = task._concept_sampling()  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  draws = {tuple(concepts_lib.sample_concepts(cs.vocab, cs.sims[train[0].video_id], k, cs.temperature, rng))
           for _ in range(20)}
  assert all(len(set(d)) == k and set(d) <= set(vocab) for d in draws) and len(draws) > 1
  with prepared.unlocked():
    prepared.tasks = {"caption": 1.0, "classify": 0.0, "tags": 0.0, "qa": 0.0}
  task = captiont5.CaptionT5Task(prepared)
  task.workdir = str(tmp_path / "run")
  assert len(inputs(task)) > 1
  with prepared.unlocked():
    prepared.thoughts.concept_train = "top_k"
  task = captiont5.CaptionT5Task(prepared)
  task.workdir = str(tmp_path / "run")
  assert task._concept_sampling() is None and len(inputs(task)) == 1  # pylint: disable=protected-access
