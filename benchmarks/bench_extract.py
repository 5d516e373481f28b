"""Feature extraction, clips/s from mp4 files to CLIP features on disk: t5video vs PyTorch.

Both sides start as a fresh process (what a user runs and waits for) and are
timed from launch to exit, start-up, JIT compilation and model loading
included:

  ours     ``t5video extract-features --layout generic --root DIR --clip CKPT
           --layers pooled --num-frames 8 --size 224 --batch-size B
           --workers W --dtype float16`` (PyAV sparse decoding in Grain
           workers, jitted Flax CLIP vision tower, .npy shards)
  pytorch  what a user would write: ``torch.utils.data.DataLoader(num_workers=W,
           batch_size=B)`` over a Dataset that decodes the same 8 frames per
           clip with torchcodec (``VideoDecoder(seek_mode='approximate',
           num_ffmpeg_threads=1, transforms=[Resize, CenterCrop])`` +
           ``get_frames_at``) or decord2 (``VideoReader(width, height,
           num_threads=1)`` + ``get_batch``), CLIP normalisation in torch,
           ``transformers.CLIPVisionModel`` under ``torch.inference_mode()``,
           ``pooler_output`` saved as float16 ``.npy``; every installed
           decoder is run and the faster counts.

The checkpoint is a randomly initialised HF ``CLIPVisionModel`` saved with
``save_pretrained`` (ViT-B/32 dimensions by default: 12 layers, 768 wide, patch
32, 224 px; ``--variant tiny`` for a smoke run). The videos are ``--clips``
H.264 files made here with PyAV (``--width`` x ``--height``, ``--seconds``
long, 30 fps), 8 frames each (uniform sampling, short side 224, centre crop).
Repetitions are interleaved (ours, pytorch/torchcodec, pytorch/decord2, ours,
...) and each side's median wall time is reported, with

  ours / pytorch = N.NNx   (clips/s ratio against the faster PyTorch pipeline)

Run (from the repository root):

  .venv/bin/python benchmarks/bench_extract.py
  .venv/bin/python benchmarks/bench_extract.py --variant tiny --clips 16 --repeats 1   # smoke
  .venv/bin/python benchmarks/bench_extract.py --decord2-path .venv/decord2 --torchcodec-stubs

(The two last flags are described in benchmarks/README.md and bench_decode.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NUM_FRAMES = 8
SIZE = 224

VARIANTS = {
    'B/32': dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, image_size=224, patch_size=32),
    'tiny': dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, image_size=224, patch_size=32),
}


# ---------------------------------------------------------------------------
# Fixtures: videos and a checkpoint
# ---------------------------------------------------------------------------


def make_videos(root: str, clips: int, width: int, height: int, seconds: float) -> None:
  sys.path.insert(0, HERE)
  from bench_decode import make_clip  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.join(root, 'videos'), exist_ok=True)
  # A few distinct files, repeated under different names: the page cache holds
  # them either way, and encoding is slow on a busy machine.
  distinct = min(clips, 4)
  for k in range(distinct):
    p = os.path.join(root, 'videos', f'src{k}.mp4')
    if not os.path.exists(p):
      make_clip(p, width, height, seconds, 30, 250)
  with open(os.path.join(root, 'annotations.jsonl'), 'w') as f:
    for i in range(clips):
      name = os.path.join('videos', f'clip{i:04d}.mp4')
      dst = os.path.join(root, name)
      if not os.path.exists(dst):
        os.link(os.path.join(root, 'videos', f'src{i % distinct}.mp4'), dst)
      f.write(json.dumps({'video_id': f'clip{i:04d}', 'path': name, 'caption': 'x',
                          'split': 'train'}) + '\n')


def make_checkpoint(path: str, variant: str) -> None:
  if os.path.exists(os.path.join(path, 'config.json')):
    return
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  config = transformers.CLIPVisionConfig(**VARIANTS[variant])
  transformers.CLIPVisionModel(config).eval().save_pretrained(path)


# ---------------------------------------------------------------------------
# The PyTorch pipeline (run as `bench_extract.py --torch-pipeline ...`)
# ---------------------------------------------------------------------------


def _uniform_indices(n: int):
  import numpy as np  # pylint: disable=import-outside-toplevel
  return np.floor((np.arange(NUM_FRAMES) + 0.5) * n / NUM_FRAMES).astype(np.int64)


def _resized(width: int, height: int) -> tuple[int, int]:
  if width >= height:
    return round(width * SIZE / height), SIZE
  return SIZE, round(height * SIZE / width)


class TorchcodecClips:
  """A map-style dataset: path -> uint8 tensor [8, 224, 224, 3] via torchcodec."""

  def __init__(self, paths):
    self.paths = paths

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    sys.path.insert(0, HERE)
    from bench_decode import torchcodec_module  # loads stubs in workers if asked
    torchcodec_module()
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import CenterCrop, Resize
    import av
    with av.open(self.paths[i]) as c:  # frame size (torchcodec's Resize needs it up front)
      s = c.streams.video[0]
      w, h = _resized(s.codec_context.width, s.codec_context.height)
    dec = VideoDecoder(self.paths[i], seek_mode='approximate', num_ffmpeg_threads=1,
                       dimension_order='NHWC', transforms=[Resize((h, w)), CenterCrop((SIZE, SIZE))])
    return dec.get_frames_at(_uniform_indices(dec.metadata.num_frames).tolist()).data


class DecordClips(TorchcodecClips):
  """The same with decord2: scale while decoding, centre crop in torch."""

  def __getitem__(self, i):
    import torch
    sys.path.insert(0, HERE)
    from bench_decode import decord_module
    decord, _, _ = decord_module()
    import av
    with av.open(self.paths[i]) as c:
      s = c.streams.video[0]
      w, h = _resized(s.codec_context.width, s.codec_context.height)
    vr = decord.VideoReader(self.paths[i], ctx=decord.cpu(0), width=w, height=h, num_threads=1)
    x = torch.from_numpy(vr.get_batch(_uniform_indices(len(vr))).asnumpy())
    y0, x0 = (h - SIZE) // 2, (w - SIZE) // 2
    return x[:, y0:y0 + SIZE, x0:x0 + SIZE].contiguous()


def torch_pipeline(root: str, clip: str, out: str, decoder: str, batch_size: int,
                   workers: int) -> None:
  import numpy as np
  import torch
  import transformers
  paths = []
  with open(os.path.join(root, 'annotations.jsonl')) as f:
    for line in f:
      paths.append(os.path.join(root, json.loads(line)['path']))
  dataset = (TorchcodecClips if decoder == 'torchcodec' else DecordClips)(paths)
  loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                       shuffle=False)
  model = transformers.CLIPVisionModel.from_pretrained(clip).eval()
  mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
  std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
  feats = []
  with torch.inference_mode():
    for frames in loader:  # uint8 [B, T, H, W, 3]
      b, t = frames.shape[:2]
      x = frames.reshape(b * t, SIZE, SIZE, 3).permute(0, 3, 1, 2).float().div_(255)
      x = (x - mean) / std
      pooled = model(pixel_values=x).pooler_output  # [B*T, D]
      feats.append(pooled.reshape(b, t, -1).to(torch.float16).numpy())
  os.makedirs(out, exist_ok=True)
  np.save(os.path.join(out, 'pooled.npy'), np.concatenate(feats))


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def _run(cmd: list[str], out: str, env: dict) -> float:
  shutil.rmtree(out, ignore_errors=True)
  t = time.perf_counter()
  r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wall = time.perf_counter() - t
  if r.returncode != 0:
    raise RuntimeError(f'{cmd[:4]} failed ({r.returncode}):\n{r.stderr[-3000:]}')
  return wall


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--work-dir', default=os.path.join(os.environ.get('TMPDIR', '/tmp'),
                                                         't5video_bench_extract'))
  parser.add_argument('--variant', default='B/32', choices=sorted(VARIANTS))
  parser.add_argument('--clips', type=int, default=64)
  parser.add_argument('--width', type=int, default=320)
  parser.add_argument('--height', type=int, default=240)
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--batch-size', type=int, default=8)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--decoders', default='torchcodec,decord2',
                      help='decoders tried for the PyTorch pipeline')
  parser.add_argument('--decord2-path', default=None)
  parser.add_argument('--torchcodec-stubs', action='store_true')
  # Internal: the PyTorch pipeline itself.
  parser.add_argument('--torch-pipeline', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--root', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--clip', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--out', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.decord2_path:
    os.environ['T5VIDEO_DECORD2_PATH'] = os.path.abspath(args.decord2_path)
  if args.torchcodec_stubs:
    os.environ['T5VIDEO_TORCHCODEC_STUBS'] = '1'

  if args.torch_pipeline:
    torch_pipeline(args.root, args.clip, args.out, args.torch_pipeline, args.batch_size,
                   args.workers)
    return

  sys.path.insert(0, HERE)
  from bench_decode import decord_module, torchcodec_module  # pylint: disable=import-outside-toplevel

  tag = f'{args.clips}x{args.width}x{args.height}_{args.seconds:g}s'
  root = os.path.join(args.work_dir, f'videos_{tag}')
  clip = os.path.join(args.work_dir, f'clip_{args.variant.replace("/", "")}')
  t = time.perf_counter()
  make_videos(root, args.clips, args.width, args.height, args.seconds)
  make_checkpoint(clip, args.variant)
  print(f'fixtures ready in {time.perf_counter() - t:.1f} s: {root}, {clip}', flush=True)

  env = dict(os.environ)
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  contenders = {
      'ours': [sys.executable, '-m', 't5video.cli', 'extract-features', '--layout', 'generic',
               '--root', root, '--split', 'train', '--out', os.path.join(args.work_dir, 'out_ours'),
               '--clip', clip, '--layers', 'pooled', '--num-frames', str(NUM_FRAMES),
               '--size', str(SIZE), '--batch-size', str(args.batch_size),
               '--workers', str(args.workers), '--dtype', 'float16',
               '--shard-size', str(max(args.clips, 1))],
  }
  missing = []
  for dec in [d for d in args.decoders.split(',') if d]:
    if dec == 'torchcodec':
      ok, why = torchcodec_module()
    else:
      mod, label, why = decord_module()
      ok = mod is not None and label == 'decord2'
      why = why or 'decord2 not on the path (--decord2-path)'
    if not ok:
      missing.append(f'{dec}: {why}')
      continue
    contenders[f'pytorch+{dec}'] = [
        sys.executable, os.path.abspath(__file__), '--torch-pipeline', dec, '--root', root,
        '--clip', clip, '--out', os.path.join(args.work_dir, f'out_{dec}'),
        '--batch-size', str(args.batch_size), '--workers', str(args.workers)]
  for m in missing:
    print(f'missing: {m}')

  print(f'\n{args.clips} clips ({args.width}x{args.height}, {args.seconds:g} s H.264) -> '
        f'{NUM_FRAMES} frames at {SIZE}x{SIZE} -> CLIP {args.variant} pooled features (float16 .npy); '
        f'batch {args.batch_size} clips, {args.workers} decode workers; {os.cpu_count()} CPUs; '
        f'load average at start {os.getloadavg()[0]:.2f}', flush=True)
  walls = {name: [] for name in contenders}
  loads = []
  for r in range(args.repeats):
    for name, cmd in contenders.items():
      out = cmd[cmd.index('--out') + 1]
      walls[name].append(_run(cmd, out, env))
      print(f'  round {r + 1} {name}: {walls[name][-1]:.1f} s', flush=True)
    loads.append(os.getloadavg()[0])

  # The same features? (same weights, same frames up to decoder rounding)
  import numpy as np  # pylint: disable=import-outside-toplevel
  ours_feat = np.load(os.path.join(args.work_dir, 'out_ours', 'shard-00000', 'pooled.npy'))
  for name in contenders:
    if name != 'ours':
      theirs = np.load(os.path.join(contenders[name][contenders[name].index('--out') + 1],
                                    'pooled.npy'))
      cos = np.sum(ours_feat.astype(np.float32) * theirs.astype(np.float32), -1) / (
          np.linalg.norm(ours_feat.astype(np.float32), axis=-1)
          * np.linalg.norm(theirs.astype(np.float32), axis=-1))
      print(f'  {name}: shape {theirs.shape}, cosine to ours min {cos.min():.4f} '
            f'mean {cos.mean():.4f}')

  print(f'\n{"contender":<22}{"median s":>10}{"best s":>10}{"clips/s":>10}')
  rates = {}
  for name, v in walls.items():
    rates[name] = args.clips / statistics.median(v)
    print(f'{name:<22}{statistics.median(v):>10.1f}{min(v):>10.1f}{rates[name]:>10.2f}')
  print(f'load average after each round: {", ".join(f"{x:.2f}" for x in loads)}')
  others = {k: v for k, v in rates.items() if k != 'ours'}
  if others:
    best = max(others, key=others.get)
    print(f'\nours / pytorch = {rates["ours"] / others[best]:.2f}x (best PyTorch pipeline: {best})')
  else:
    print('\nno PyTorch pipeline could run (see missing:)')


if __name__ == '__main__':
  main()
