"""TFDS builders (ArrayRecord) for the synthetic dataset and local layouts.

Two builders write TFDS datasets in the ArrayRecord format, which Grain reads
by random access (``tfds.data_source`` / ``builder.as_data_source()``):

* :class:`SyntheticVideos` packs a folder rendered by ``t5video data
  synthetic`` (its ``annotations.jsonl``, read with ``layouts.read_generic``).
* :class:`LocalLayoutVideos` packs a dataset stored in one of the public
  layouts; one BuilderConfig per layout: ``msrvtt``, ``vatex``, ``kinetics``,
  ``qvhighlights``, ``generic`` (read with ``layouts.read_dataset``).

Both take the folder as TFDS's ``manual_dir`` (``download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=DIR))``) or, for
scripts, as the ``root`` of a :class:`VideoBuilderConfig`; :func:`build` does
either in one call.

Each example stores the **encoded video file's bytes** (decoded later, in the
Grain workers, by ``pipeline.VideoDecodeTransform``) plus the annotation
fields: ``video_id``, ``path`` (the original file), ``label``, ``split``,
``captions``, ``tags``, ``video_error`` ('' or 'missing' / 'empty' when the
file could not be read at build time; the pipeline counts those like any other
failed decode) and ``record`` (the whole :class:`VideoRecord` as JSON, so
moments, saliency, metadata and the window survive). Items of the data source
go straight into ``pipeline.make_loader`` (``VideoDecodeTransform`` accepts
them like ``VideoRecord``s).

Why bytes, not frames. Measured on 60 rendered synthetic clips (seed 0,
2-4 s, 96x72 / 128x96 / 112x112 at 8-12 fps, H.264) with
``python -m t5video.data.tfds_builders --manual_dir DIR --data_dir D``:

  ==============================================  ==========  =======
  what would be stored                            bytes/clip  vs. mp4
  ==============================================  ==========  =======
  encoded mp4 (what this builder stores)          15.6 KB     1x
  the built ArrayRecord dataset (mp4 + annots.)   20.8 KB     1.3x
  every decoded frame, uint8                      979 KB      63x
  every decoded frame, zlib (TFDS 'zlib' Tensor)  357 KB      23x
  8 frames at 224x224, uint8 (one sampling)       1204 KB     77x
  ==============================================  ==========  =======

Storing frames also freezes one sampling (no TSN-style random segments, no
random crops, no fps changes) and, at full resolution, multiplies the disk
size by one to two orders of magnitude (the command above measures your own
data).

TensorFlow: **not needed.** Building and reading back run with TensorFlow not
installed (``tests/test_tfds.py`` asserts that ``import tensorflow`` fails and
builds, reads and decodes a dataset). What needs TF is ``tfds.features.Video``
and ``tfds.features.Image`` (they encode with ``tf.io``), which is why frames
would have to be ``Tensor(dtype=np.uint8)`` and why this module stores bytes
in a ``Tensor(shape=(), dtype=np.object_)``; TF would add about 1.3 GB to the
install. The builders live in this importable module because a builder class
defined in ``__main__`` breaks Grain worker processes (TFDS registers the
class again on unpickling: "already registered"). TFDS 4.9.10 also imports
the undeclared ``importlib_resources`` package for any builder defined in an
importable module; the builders here override ``code_path`` so that it is not
needed either.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import zlib
from typing import Any, Iterator, Optional, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from t5video.data.records import VideoRecord

LAYOUTS = ("msrvtt", "vatex", "kinetics", "qvhighlights", "generic")
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(eq=False)
class VideoBuilderConfig(tfds.core.BuilderConfig):
  """A BuilderConfig naming the layout and, optionally, the dataset folder.

  Attributes:
    layout: one of :data:`LAYOUTS`.
    root: the dataset folder; None takes TFDS's ``manual_dir``.
    splits: the splits to build; a split whose annotation file does not exist
      is skipped (logged), a malformed one is an error.
    reader_kwargs: extra keyword arguments of ``layouts.read_dataset``.
  """
  layout: str = "generic"
  root: Optional[str] = None
  splits: tuple[str, ...] = SPLITS
  reader_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "video": tfds.features.Tensor(shape=(), dtype=np.object_),
      "video_error": tfds.features.Text(),
      "video_id": tfds.features.Text(),
      "path": tfds.features.Text(),
      "label": tfds.features.Text(),
      "split": tfds.features.Text(),
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "tags": tfds.features.Sequence(tfds.features.Text()),
      "record": tfds.features.Text(),
  })


def _read_video(path: str) -> tuple[bytes, str]:
  """The file's bytes and '' , or b'' and the error kind."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    return b"", "missing"
  except IsADirectoryError:
    return b"", "missing"
  return data, ("" if data else "empty")


def _example(record: VideoRecord) -> dict[str, Any]:
  data, error = _read_video(record.path)
  return {
      "video": data,
      "video_error": error,
      "video_id": record.video_id,
      "path": record.path,
      "label": record.label or "",
      "split": record.split,
      "captions": list(record.captions),
      "tags": list(record.tags),
      "record": json.dumps(record.to_json(), sort_keys=True),
  }


class _VideoBuilderMixin:
  """Shared generation: examples keyed by their position in the split."""

  # TFDS 4.9.10 finds a builder's source file through a check that imports
  # `importlib_resources`, a package it does not declare (and that is not
  # installed here): any builder defined in an importable module fails with
  # ModuleNotFoundError in `download_and_prepare`. Our builders' code is this
  # file, so say so directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _root(self, dl_manager) -> str:
    root = self.builder_config.root
    if root is None:
      try:
        root = os.fspath(dl_manager.manual_dir)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(
            f"{self.name}: no dataset folder; pass manual_dir (DownloadConfig("
            "manual_dir=DIR)) or a VideoBuilderConfig with root=DIR") from e
    if not os.path.isdir(root):
      raise FileNotFoundError(f"{self.name}: dataset folder {root} not found")
    return root

  def _generate_examples(self, records: Sequence[VideoRecord]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    errors = collections.Counter()
    for i, record in enumerate(records):
      example = _example(record)
      if example["video_error"]:
        errors[example["video_error"]] += 1
        logging.warning("%s: %s video %s (stored as a failed example)",
                        self.name, example["video_error"], record.path)
      yield i, example
    if errors:
      logging.warning("%s: %s", self.name, dict(errors))


class SyntheticVideos(_VideoBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """The rendered synthetic dataset (``t5video data synthetic --out DIR``)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Encoded mp4 bytes plus the generic annotations."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Render the dataset with `t5video data synthetic --out DIR --num-videos "
      "N --seed S` and pass DIR as manual_dir.")
  BUILDER_CONFIGS = [VideoBuilderConfig(name="default", layout="generic")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=_features(),
        description="t5video's procedurally rendered synthetic videos.")

  def _split_generators(self, dl_manager):
    from t5video.data import layouts  # pylint: disable=g-import-not-at-top
    root = self._root(dl_manager)
    if not os.path.exists(os.path.join(root, "DONE")):
      raise ValueError(
          f"{root} has no DONE file: the synthetic dataset is missing or half "
          "rendered; render it again with `t5video data synthetic`")
    records = layouts.read_generic(os.path.join(root, "annotations.jsonl"))
    by_split = collections.defaultdict(list)
    for r in records:
      by_split[r.split].append(r)
    return {split: self._generate_examples(recs)
            for split, recs in sorted(by_split.items())
            if split in self.builder_config.splits}


class LocalLayoutVideos(_VideoBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """A dataset in one of the public layouts on local disk (``manual_dir``)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Encoded video bytes plus the layout's annotations."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the dataset in its published layout in a folder (e.g. MSR-VTT's "
      "train_val_videodatainfo.json, test_videodatainfo.json, TrainValVideo/ "
      "and TestVideo/) and pass it as manual_dir; see t5video.data.layouts.")
  BUILDER_CONFIGS = [VideoBuilderConfig(name=layout, layout=layout)
                     for layout in LAYOUTS]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=_features(),
        description=f"Videos in the {self.builder_config.layout} layout.")

  def _split_generators(self, dl_manager):
    from t5video.data import layouts  # pylint: disable=g-import-not-at-top
    root = self._root(dl_manager)
    config = self.builder_config
    generators = {}
    for split in config.splits:
      try:
        records = layouts.read_dataset(config.layout, root, split,
                                       **dict(config.reader_kwargs))
      except FileNotFoundError as e:
        logging.info("%s: no %s split (%s)", self.name, split, e)
        continue
      if records:
        generators[split] = self._generate_examples(records)
    if not generators:
      raise ValueError(
          f"{root}: found no split of {config.splits} in the {config.layout} "
          "layout")
    return generators


def build(builder_cls: type, manual_dir: str, data_dir: str, *,
          config: str | VideoBuilderConfig | None = None
          ) -> tfds.core.DatasetBuilder:
  """Builds (or reuses) a dataset in ArrayRecord format and returns the builder.

  Args:
    builder_cls: :class:`SyntheticVideos` or :class:`LocalLayoutVideos`.
    manual_dir: the dataset folder.
    data_dir: where TFDS writes the prepared dataset.
    config: a config name (e.g. 'msrvtt') or a :class:`VideoBuilderConfig`.

  Returns:
    The prepared builder; ``builder.as_data_source()[split]`` is a Grain
    source.
  """
  builder = builder_cls(data_dir=data_dir, config=config,
                        file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def measure_storage(records: Sequence[VideoRecord], *, sample_frames: int = 8,
                    sample_size: int = 224) -> dict[str, float]:
  """Average bytes per clip of storing encoded video vs decoded frames.

  Returns:
    ``{'mp4', 'frames_raw', 'frames_zlib', 'sampled_raw'}`` bytes per clip
    (averaged over the readable records) and the clip count.
  """
  import av  # pylint: disable=g-import-not-at-top
  sums = collections.Counter()
  count = 0
  for r in records:
    data, error = _read_video(r.path)
    if error:
      continue
    with av.open(r.path) as container:
      frames = np.stack([f.to_ndarray(format="rgb24")
                         for f in container.decode(video=0)])
    sums["mp4"] += len(data)
    sums["frames_raw"] += frames.nbytes
    sums["frames_zlib"] += len(zlib.compress(frames.tobytes()))
    sums["sampled_raw"] += sample_frames * sample_size * sample_size * 3
    count += 1
  out = {k: v / max(count, 1) for k, v in sums.items()}
  out["clips"] = count
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Measures storage of a dataset folder and, with ``--data_dir``, builds it.

  ``python -m t5video.data.tfds_builders --manual_dir DIR [--layout L]
  [--data_dir D] [--limit N]``; without ``--layout`` DIR is a synthetic
  render.
  """
  import argparse  # pylint: disable=g-import-not-at-top

  from t5video.data import layouts  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="python -m t5video.data.tfds_builders")
  parser.add_argument("--manual_dir", required=True)
  parser.add_argument("--layout", default=None, choices=LAYOUTS)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--limit", type=int, default=None)
  args = parser.parse_args(argv)
  if args.layout is None:
    records = layouts.read_generic(
        os.path.join(args.manual_dir, "annotations.jsonl"))
  else:
    records = layouts.read_dataset(args.layout, args.manual_dir, "all")
  sizes = measure_storage(records[:args.limit])
  for k in ("frames_raw", "frames_zlib", "sampled_raw"):
    sizes[f"{k}_vs_mp4"] = sizes[k] / max(sizes["mp4"], 1)
  print(json.dumps(sizes, indent=1))
  if args.data_dir:
    if args.layout is None:
      builder = build(SyntheticVideos, args.manual_dir, args.data_dir)
    else:
      builder = build(LocalLayoutVideos, args.manual_dir, args.data_dir,
                      config=args.layout)
    total = sum(os.path.getsize(os.path.join(d, f))
                for d, _, files in os.walk(builder.data_dir) for f in files)
    print(json.dumps({"tfds_dir": os.fspath(builder.data_dir),
                      "tfds_bytes": total,
                      "tfds_bytes_per_clip": total / max(len(records), 1)}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
