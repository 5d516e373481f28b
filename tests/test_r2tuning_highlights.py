"""R2-Tuning's highlight-detection benchmarks (TVSum, YouTube Highlights): their annotations
converted into the QVHighlights layout, the highlight-only model and losses, the clip mapping
between sampled and annotated clips, and one TVSum-format run end to end on rendered mp4 files
(converter -> features -> training -> top-5 mAP with its controls)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5video import cli
from t5video import config as config_lib
from t5video.data import grounding_formats
from t5video.data import layouts
from t5video.evaluate import grounding
from t5video.models import r2tuning as r2
from t5video.models import r2tuning_losses as losses
from t5video.recipes.r2tuning import data as data_lib

TVSUM = "configs/r2tuning/tvsum.py"
YOUTUBE = "configs/r2tuning/youtube_highlights.py"
BK = grounding_formats.highlight_splits()["tvsum"]["BK"]          # 4 train, 1 val video ids


@pytest.mark.parametrize("spec", [f"{TVSUM}:BK", f"{TVSUM}:VU,meanpool", f"{YOUTUBE}:dog",
                                  f"{YOUTUBE}:surfing,meanpool"])
def test_highlight_configs_load_as_the_paper_trains(spec):
  config = config_lib.load_config_file(spec)
  config_lib.validate(config)
  assert config.model.highlight_only and tuple(config.model.strides) == (1,)
  assert not config.model.use_tef and config.optim.schedule == "constant"
  assert config.train.batch_size == 4 and config.optim.warmup_steps == 50
  assert config.eval.highlight_metric in ("tvsum", "youtube")
  assert config.model.head == ("meanpool" if "meanpool" in spec else "r2")
  if spec.startswith(TVSUM):
    assert config.train.num_steps == 500 and config.data.fps == 0.5   # 500 epochs of 4 videos
  with pytest.raises(ValueError, match="DOMAIN"):
    config_lib.load_config_file(f"{spec.split(':')[0]}:nope")


def test_highlight_only_needs_stride_one():
  config = config_lib.load_config_file(f"{TVSUM}:BK")
  with config.unlocked():
    config.model.strides = (1, 2)
  with pytest.raises(ValueError, match="model.strides=\\(1,\\)"):
    config_lib.validate(config)


# ------------------------------------------------------------------------------------------
# Converters
# ------------------------------------------------------------------------------------------


def _write_tvsum(root, videos, titles=None):
  """A TVSum release's two TSV files for ``videos``: ``{vid: (length 'm:ss', [20 x frame scores])}``."""
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "ydata-tvsum50-info.tsv"), "w") as f:
    f.write("category\tvideo_id\ttitle\turl\tlength\n")
    for vid, (length, _) in videos.items():
      title = (titles or {}).get(vid, f"title of {vid}")
      f.write(f"BK\t{vid}\t{title}\thttps://example.org/{vid}\t{length}\n")
  with open(os.path.join(root, "ydata-tvsum50-anno.tsv"), "w") as f:
    for vid, (_, users) in videos.items():
      for scores in users:
        f.write(f"{vid}\tBK\t{','.join(str(int(s)) for s in scores)}\n")


def test_tvsum_converter_splits_by_domain_and_reads_mid_clip_scores(tmp_path):
  rng = np.random.default_rng(0)
  # 0:12 of video, 120 frames (10 fps): 6 clips of 2 s; each user's scores constant per clip
  users = [np.repeat(rng.integers(1, 6, 6), 20) for _ in range(20)]
  videos = {vid: ("0:12", users) for vid in BK["train"] + BK["val"] + ["not_in_any_split"]}
  _write_tvsum(str(tmp_path), videos)
  said = []
  written = grounding_formats.convert("tvsum", str(tmp_path), log=said.append)
  assert sorted(os.path.basename(p) for p in written) == ["highlight_train_release.jsonl",
                                                          "highlight_val_release.jsonl"]
  train = layouts.read_qvhighlights(os.path.join(tmp_path, "highlight_train_release.jsonl"), str(tmp_path))
  assert len(train) == 4
  rows = [json.loads(x) for x in open(os.path.join(tmp_path, "highlight_val_release.jsonl"))]
  assert [r["vid"] for r in rows] == BK["val"] and rows[0]["domain"] == "BK"
  assert rows[0]["query"] == f"title of {BK['val'][0]}" and rows[0]["duration"] == 12.0
  table = np.asarray(rows[0]["clip_scores"])
  assert table.shape == (6, 20) and rows[0]["clip_seconds"] == 2.0 and rows[0]["score_range"] == [1, 5]
  np.testing.assert_array_equal(table, np.stack([u[10::20] for u in users], axis=1))
  assert any("1 annotated videos are in no split" in line and "not_in_any_split" in line for line in said)
  # a malformed line names its file and line
  with open(os.path.join(tmp_path, "ydata-tvsum50-anno.tsv"), "a") as f:
    f.write(f"{BK['val'][0]}\tBK\t1,2,x\n")
  with pytest.raises(layouts.AnnotationError, match="ydata-tvsum50-anno.tsv:121: the scores"):
    grounding_formats.convert("tvsum", str(tmp_path))


def test_youtube_converter_and_cli(tmp_path, capsys):
  dog = grounding_formats.highlight_splits()["youtube_highlights"]["dog"]
  anno = {vid: {"frames": 300, "fps": 30.0, "match": [-1, 1, 1, -1, -1],
                "info": ["a", "b", "c", "d", "e", "a dog catches a frisbee"]}
          for vid in dog["train"][:2] + dog["val"][:1]}
  with open(tmp_path / "youtube_anno.json", "w") as f:
    json.dump(anno, f)
  assert cli.main(["data", "youtube-highlights", "--root", str(tmp_path)]) == 0
  rows = [json.loads(x) for x in open(tmp_path / "highlight_train_release.jsonl")]
  assert len(rows) == 2 and rows[0]["domain"] == "dog" and rows[0]["query"] == "a dog catches a frisbee"
  assert rows[0]["clip_seconds"] == 2.0 and rows[0]["clip_scores"] == [[-1], [1], [1], [-1], [-1]]
  assert "youtube-highlights" in capsys.readouterr().out
  anno[dog["val"][0]]["match"] = []
  with open(tmp_path / "youtube_anno.json", "w") as f:
    json.dump(anno, f)
  with pytest.raises(SystemExit, match=f"youtube_anno.json: video '{dog['val'][0]}'"):
    cli.main(["data", "youtube-highlights", "--root", str(tmp_path)])


# ------------------------------------------------------------------------------------------
# Targets, clip mapping, losses and the metric
# ------------------------------------------------------------------------------------------


def test_targets_and_predictions_map_between_sampled_and_annotated_clips():
  row = {"clip_seconds": 2.0, "clip_scores": [[1, 1], [5, 5], [3, 3]], "score_range": [1, 5]}
  # TVSum's grid (one frame per 2 s): one to one, (mean - 1) / 4
  np.testing.assert_allclose(data_lib.highlight_targets(row, 3, 0.5), [0, 1, 0.5])
  np.testing.assert_allclose(data_lib.annotated_clip_scores(row, [0.1, 0.9, 0.4], 0.5), [0.1, 0.9, 0.4])
  # two frames per annotated clip: targets repeat, predictions average
  np.testing.assert_allclose(data_lib.highlight_targets(row, 6, 1.0), [0, 0, 1, 1, 0.5, 0.5])
  np.testing.assert_allclose(data_lib.annotated_clip_scores(row, [0, 1, 2, 3, 4, 5], 1.0), [0.5, 2.5, 4.5])
  # annotated clips shorter than the period take the nearest frame; missing ones score 0
  short = {"clip_seconds": 0.5, "clip_scores": [[-1]] * 6, "score_range": [-1, 1]}
  np.testing.assert_allclose(data_lib.annotated_clip_scores(short, [7.0, 9.0], 1.0), [7, 7, 9, 9, 0, 0])


def test_highlight_only_model_has_no_boundary_head_and_trains_on_soft_targets():
  config = r2.R2TuningConfig.variant("tiny", strides=(1,), use_tef=False, highlight_only=True,
                                     loss_reg=0.0)
  full = r2.R2TuningConfig.variant("tiny", strides=(1,), use_tef=False)
  params = r2.init_params(config, jax.random.PRNGKey(0), num_clips=6)
  assert "coord_head" not in params and "coef" not in params
  assert r2.count_params(params) < r2.count_params(r2.init_params(full, jax.random.PRNGKey(0), num_clips=6))
  b, t = 2, 6
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.normal(size=(b, config.num_layers, t, config.num_tokens, config.video_dim)), jnp.float32)
  query = jnp.asarray(rng.normal(size=(b, config.num_layers, 5, config.query_dim)), jnp.float32)
  mask = jnp.asarray([[1] * 6, [1] * 4 + [0] * 2])
  out = r2.R2Tuning(config).apply({"params": params}, video, mask, query, jnp.ones((b, 5)))
  sal = jnp.asarray([[0, .25, 1, .5, 0, .75], [1, 0, .5, .5, 0, 0]], jnp.float32)
  batch = {"video_mask": mask, "boundaries": jnp.zeros((b, 1, 2)), "boundary_mask": jnp.zeros((b, 1)),
           "saliency": sal, "pos_clip": jnp.asarray([2, 0])}
  _, parts = losses.r2tuning_loss(out, batch, config)
  x = np.asarray(out["class_logits"])
  m = np.asarray(mask, np.float64)
  bce = np.logaddexp(0, x) - x * np.asarray(sal)
  np.testing.assert_allclose(parts["cls"], (bce * m).sum() / m.sum(), rtol=1e-5)
  assert float(parts["reg"]) == 0.0
  row_only = losses.sampled_nce_loss(out["video_emb"], out["query_emb"], mask, sal, batch["pos_clip"],
                                     column=False)
  np.testing.assert_allclose(parts["sal"], row_only, rtol=1e-6)
  both = losses.sampled_nce_loss(out["video_emb"], out["query_emb"], mask, sal, batch["pos_clip"])
  assert abs(float(both) - float(row_only)) > 1e-3
  # an example marked invalid (padding, an undecodable video) carries no BCE target
  _, dropped = losses.r2tuning_loss(out, dict(batch, valid=jnp.asarray([True, False])), config)
  np.testing.assert_allclose(dropped["cls"], bce[0].mean(), rtol=1e-5)
  # saliency at inference is the class probability alone
  pred = losses.predict_saliency(out, mask, (1,), with_cosine=False)
  np.testing.assert_allclose(np.asarray(pred), np.where(m > 0, 1 / (1 + np.exp(-x)), 0), rtol=1e-5)


def test_positive_clip_is_above_the_lower_median():
  rng = np.random.default_rng(0)
  sal = np.asarray([0.1, 0.5, 0.5, 0.9])          # lower median 0.5: only 0.9 is above
  assert {losses.sample_positive_clip(sal, rng, above_median=True) for _ in range(20)} == {3}
  tied = np.asarray([0.2, 0.9, 0.9, 0.1])         # lower median 0.2: the two maxima
  assert {losses.sample_positive_clip(tied, rng, above_median=True) for _ in range(40)} == {1, 2}
  flat = np.asarray([0.1, 0.5, 0.5, 0.5])         # none above the median 0.5: the maxima
  assert {losses.sample_positive_clip(flat, rng, above_median=True) for _ in range(40)} == {1, 2, 3}


# ------------------------------------------------------------------------------------------
# End to end on rendered videos in the TVSum release's format
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tvsum_run(tmp_path_factory):
  """5 rendered videos renamed to TVSum's BK ids, scored 5 inside each video's first event and 1
  elsewhere (with annotator noise), converted by ``t5video data tvsum`` and trained 12 steps."""
  from t5video.data import synthetic_grounding  # pylint: disable=g-import-not-at-top
  from t5video.data import decode  # pylint: disable=g-import-not-at-top
  from t5video.train import stages  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp("tvsum")
  rendered = str(base / "rendered")
  synthetic_grounding.render_grounding_dataset(rendered, num_videos=5, seed=3, shots=(2, 3),
                                               shot_seconds=(4.0, 6.0), size=(64, 48), fps=2)
  rows = {}
  for split in ("train", "val", "test"):
    for line in open(os.path.join(rendered, f"highlight_{split}_release.jsonl")):
      r = json.loads(line)
      rows.setdefault(r["vid"], r)
  assert len(rows) == 5
  release = base / "release"
  os.makedirs(release / "video")
  rng = np.random.default_rng(0)
  videos, titles = {}, {}
  for vid, r in zip(BK["train"] + BK["val"], rows.values()):
    titles[vid] = r["query"]
    shutil.copy(os.path.join(rendered, "videos", f"{r['vid']}.mp4"), release / "video" / f"{vid}.mp4")
    info = decode.probe(str(release / "video" / f"{vid}.mp4"))
    duration, frames = info.duration, int(round(info.duration * info.fps))
    t = (np.arange(frames) + 0.5) / info.fps
    start, end = r["relevant_windows"][0]
    inside = (t >= start) & (t < end)
    users = [np.clip(np.where(inside, 5, 1) + rng.integers(-1, 2, frames) * (rng.random() < 0.3), 1, 5)
             for _ in range(20)]
    videos[vid] = (f"0:{int(duration):02d}", users)
  _write_tvsum(str(release), videos, titles)
  assert cli.main(["data", "tvsum", "--root", str(release)]) == 0
  assert os.path.islink(release / "videos")       # the layout's video folder -> the release's
  config = config_lib.load_config_file(f"{TVSUM}:BK")
  tiny = config_lib.load_config_file("configs/r2tuning/synthetic.py:r2,tiny")
  with config.unlocked():
    config.data.root = str(release)
    config.data.feature_dir = str(base / "features")
    config.data.max_clips = 8
    config.data.size, config.data.resize_short = 32, 36
    config.data.extract_workers = config.data.worker_count = 0
    config.data.read_threads = 1
    config.model.clip_init, config.model.clip = "", tiny.model.clip
    for key in ("dim", "num_heads", "num_layers", "sentencepiece_vocab", "text_len"):
      config.model[key] = tiny.model[key]
    config.train.num_steps, config.train.eval_every, config.train.checkpoint_every = 12, 0, 0
    config.train.log_every = 4
    config.train.batch_size = config.eval.batch_size = 8   # the test's 8 CPU devices
  workdir = str(base / "run")
  return workdir, stages.train(config, workdir)


def test_tvsum_run_reports_top5_map_with_controls(tvsum_run):
  workdir, result = tvsum_run
  assert result["step"] == 12 and not result["preempted"]
  final = json.load(open(os.path.join(workdir, "final_metrics.json")))["eval"]
  for prefix in ("", "control_text_only_", "control_other_frames_", "baseline_random_"):
    assert 0 <= final[prefix + "HL-TVSum-top5-mAP"] <= 100
  assert final["num_queries"] == 1 and not any(k.startswith("MR-") for k in final)
  # the number equals the metric recomputed from the written predictions
  config = config_lib.load_run_config(workdir)
  queries = data_lib.read_queries(config.data, "val")
  line = json.loads(open(os.path.join(workdir, "predictions_val.jsonl")).readline())
  pred = data_lib.annotated_clip_scores(queries.rows[0], line["pred_saliency_scores"], config.data.fps)
  expected = 100 * grounding.tvsum_top5_map([pred], [np.asarray(queries.rows[0]["clip_scores"])])
  assert final["HL-TVSum-top5-mAP"] == pytest.approx(expected, abs=0.01)
  assert line["pred_relevant_windows"] == []        # no boundary head, no moments


def test_one_video_split_control_keeps_the_query_and_takes_a_training_video(tvsum_run):
  from t5video.recipes.r2tuning import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from t5video.train import task as task_lib  # pylint: disable=g-import-not-at-top
  workdir, _ = tvsum_run
  task = task_lib.get_task("r2tuning")(config_lib.load_run_config(workdir))
  queries = data_lib.read_queries(task.config.data, "val")
  own = task.source(queries)[0]
  other = evaluate_lib.training_donor_source(task, queries)[0]
  np.testing.assert_array_equal(other["query"], own["query"])
  train = task.source(data_lib.read_queries(task.config.data, "train"))
  assert any(np.array_equal(other["video"], train[i]["video"]) for i in range(len(train)))
  assert not np.array_equal(other["video"], own["video"])
