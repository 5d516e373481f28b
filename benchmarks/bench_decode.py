"""Clips per second: t5video's sparse PyAV decoder vs a naive PyAV loop vs decord.

Each clip is 8 frames at 224x224 (uniform sampling: the centre frame of 8 equal
segments, short side resized to 224, centre crop) taken from a 10-second
H.264 file at 320x240 and at 1280x720 (30 fps, libx264 defaults, keyframe
interval ``--gop``). The files are generated once into ``--clip-dir``.

Contenders, single process:
  ours      ``t5video.data.decode.decode_clip`` (defaults: seek by the keyframe
            index, skip non-reference frames before each target, AUTO threads)
  ours/...  the same with one knob changed, to show what each knob is worth
  naive     PyAV: decode every frame, convert every frame to RGB, keep the 8
            wanted ones, resize and crop them with PIL
  decord    ``decord.VideoReader(path, width, height)`` (decord scales while
            decoding) + ``get_batch(idx)`` + centre crop

Then through Grain (``MapDataset.source(paths).map(decode).to_iter_dataset()
.mp_prefetch(num_workers=k)``) with 1 and 2 worker processes.

Times are wall-clock; each number is the median over ``--repeats`` interleaved
rounds (the best round is printed too, the machine may be shared); CPU seconds
per clip (all threads of the process) are steadier on a loaded machine. Grain
runs one decode at a time per process (``ReadOptions(num_threads=1)``), skips
the first ``3 x workers`` clips (start-up) and times the next ``--grain-clips``.
Run:

  .venv/bin/python benchmarks/bench_decode.py             # ~10 min on 2 busy cores
  .venv/bin/python benchmarks/bench_decode.py --gop 60    # 2-s keyframe interval
  .venv/bin/python benchmarks/bench_decode.py --quick     # fewer rounds and variants
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time

import av
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from t5video.data.decode import SamplingSpec, decode_clip, probe  # noqa: E402

SIZE = 224
NUM_FRAMES = 8


# ---------------------------------------------------------------------------
# Test clips
# ---------------------------------------------------------------------------


def make_clip(path: str, width: int, height: int, seconds: float, fps: int, gop: int) -> None:
  """A textured, moving, slightly noisy scene encoded with libx264 (preset medium)."""
  rng = np.random.default_rng(0)
  n = int(seconds * fps)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  base = (xx[..., None] * np.float32([1.0, 0.5, 0.2]) +
          yy[..., None] * np.float32([0.2, 0.7, 1.0])) % 256  # [H, W, 3]
  base += rng.integers(0, 40, (height, width, 1)).astype(np.float32)
  noise = [rng.normal(0, 3, (height, width, 1)).astype(np.float32) for _ in range(4)]
  tmp = path + '.part'
  with av.open(tmp, 'w', format='mp4') as c:
    s = c.add_stream('libx264', rate=fps)
    s.width, s.height, s.pix_fmt = width, height, 'yuv420p'
    s.codec_context.gop_size = gop
    for i in range(n):
      img = np.roll(base, shift=(i * 3, i * 2), axis=(0, 1)) + noise[i % 4]
      cx = int(width * (0.2 + 0.6 * i / n))
      cy = int(height / 2 + height / 4 * np.sin(i / 10))
      img[max(cy - height // 8, 0):cy + height // 8, max(cx - width // 10, 0):cx + width // 10] = (
          250, 40, 40)
      frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format='rgb24')
      for p in s.encode(frame):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Contenders (top-level functions: Grain pickles them into workers)
# ---------------------------------------------------------------------------


def uniform_indices(n: int) -> np.ndarray:
  return np.floor((np.arange(NUM_FRAMES) + 0.5) * n / NUM_FRAMES).astype(np.int64)


def ours(path: str, **spec_kw) -> np.ndarray:
  spec_kw.setdefault('timeout_s', 600.0)  # a shared, loaded machine must not time out
  frames, _ = decode_clip(path, SamplingSpec(num_frames=NUM_FRAMES, size=SIZE, **spec_kw))
  return frames


def naive(path: str) -> np.ndarray:
  from PIL import Image
  with av.open(path) as c:
    stream = c.streams.video[0]
    stream.thread_type = 'AUTO'
    want = set(uniform_indices(stream.frames).tolist())
    kept = []
    for i, frame in enumerate(c.decode(stream)):
      rgb = frame.to_ndarray(format='rgb24')  # every frame, as a naive loop does
      if i in want:
        kept.append(rgb)
  out = []
  for rgb in kept:
    h, w = rgb.shape[:2]
    scale = SIZE / min(h, w)
    im = Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    a = np.asarray(im)
    y, x = (a.shape[0] - SIZE) // 2, (a.shape[1] - SIZE) // 2
    out.append(a[y:y + SIZE, x:x + SIZE])
  return np.stack(out)


def decord_clip(path: str) -> np.ndarray:
  import decord
  info = probe(path)
  if info.width >= info.height:
    w, h = round(info.width * SIZE / info.height), SIZE
  else:
    w, h = SIZE, round(info.height * SIZE / info.width)
  vr = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h)
  x = vr.get_batch(uniform_indices(len(vr))).asnumpy()  # [8, h, w, 3]
  y0, x0 = (h - SIZE) // 2, (w - SIZE) // 2
  return x[:, y0:y0 + SIZE, x0:x0 + SIZE]


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


def time_single(fns: dict, paths: list[str], repeats: int) -> dict:
  """Median and best seconds per clip for each contender, interleaved rounds."""
  times = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  for name, fn in fns.items():  # warm up (imports, page cache)
    fn(paths[0])
  for _ in range(repeats):
    for name, fn in fns.items():
      for p in paths:
        t, c = time.perf_counter(), time.process_time()
        fn(p)
        times[name].append(time.perf_counter() - t)
        cpu[name].append(time.process_time() - c)
  return {name: (statistics.median(v), min(v), statistics.median(cpu[name]))
          for name, v in times.items()}


def time_grain(fn, paths: list[str], num_workers: int, clips: int) -> float:
  """Clips per second through a Grain MapDataset with ``num_workers`` processes."""
  import grain
  warm = 3 * max(num_workers, 1)
  source = [paths[i % len(paths)] for i in range(clips + warm)]
  # One decode at a time per process: Grain's default 16 prefetch threads would
  # decode ahead during the warm-up and hide the decoder's speed.
  ds = grain.MapDataset.source(source).map(fn).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  if num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=1))
  it = iter(ds)
  for _ in range(warm):  # start-up: workers spawn, import, warm up
    next(it)
  t = time.perf_counter()
  for _ in range(clips):
    x = next(it)
    assert x.shape == (NUM_FRAMES, SIZE, SIZE, 3)
  rate = clips / (time.perf_counter() - t)
  del it, ds
  gc.collect()
  return rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clip-dir', default=os.path.join(os.environ.get('TMPDIR', '/tmp'),
                                                         't5video_bench_clips'))
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--fps', type=int, default=30)
  parser.add_argument('--gop', type=int, default=250,
                      help='keyframe interval in frames (250: x264/ffmpeg default)')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--grain-clips', type=int, default=30)
  parser.add_argument('--quick', action='store_true', help='fewer rounds and variants')
  parser.add_argument('--no-grain', action='store_true')
  args = parser.parse_args()
  if args.quick:
    args.repeats, args.grain_clips = 2, 12

  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags.

  os.makedirs(args.clip_dir, exist_ok=True)
  sizes = [(320, 240), (1280, 720)]
  clips = {}
  for w, h in sizes:
    path = os.path.join(args.clip_dir, f'h264_{w}x{h}_{args.seconds:g}s_{args.fps}fps_gop{args.gop}.mp4')
    if not os.path.exists(path):
      t = time.perf_counter()
      make_clip(path, w, h, args.seconds, args.fps, args.gop)
      print(f'generated {path} in {time.perf_counter() - t:.1f} s', flush=True)
    clips[(w, h)] = path

  fns = {
      'ours': ours,
      'naive PyAV': naive,
      'decord': decord_clip,
  }
  if not args.quick:
    fns.update({
        'ours seek=never': functools.partial(ours, seek_policy='never'),
        'ours seek=always': functools.partial(ours, seek_policy='always'),
        'ours skip_nonref=False': functools.partial(ours, skip_nonref=False),
        'ours threads=NONE': functools.partial(ours, thread_type='NONE'),
        'ours threads=SLICE': functools.partial(ours, thread_type='SLICE'),
        'ours threads=FRAME': functools.partial(ours, thread_type='FRAME'),
    })

  print(f'\n{NUM_FRAMES} frames at {SIZE}x{SIZE} per clip; {args.seconds:g}-s H.264 at {args.fps} fps, '
        f'keyframe every {args.gop} frames; {os.cpu_count()} CPUs; load average '
        f'{os.getloadavg()[0]:.1f}; median (best) over {args.repeats} rounds\n')
  header = f'{"contender":<26}' + ''.join(f'{f"{w}x{h} clips/s":>22}{"cpu s/clip":>12}' for w, h in sizes)
  print(header)
  print('-' * len(header))
  results = {}
  for (w, h), path in clips.items():
    results[(w, h)] = time_single(fns, [path], args.repeats)
  for name in fns:
    row = f'{name:<26}'
    for size in sizes:
      med, best, cpu = results[size][name]
      row += f'{1 / med:>12.2f} ({1 / best:6.2f}){cpu:>12.3f}'
    print(row)
  print()
  for size in sizes:
    r = results[size]
    ours_rate = 1 / r['ours'][0]
    print(f'{size[0]}x{size[1]}: ours / decord = {ours_rate * r["decord"][0]:.2f}x, '
          f'ours / naive = {ours_rate * r["naive PyAV"][0]:.2f}x (medians; best rounds: '
          f'{r["decord"][1] / r["ours"][1]:.2f}x, {r["naive PyAV"][1] / r["ours"][1]:.2f}x)')

  if args.no_grain:
    return
  print('\nGrain MapDataset -> mp_prefetch, clips/s')
  grain_fns = {'ours': ours, 'ours threads=NONE': functools.partial(ours, thread_type='NONE'),
               'decord': decord_clip}
  header = f'{"contender":<26}' + ''.join(f'{f"{w}x{h} {k}w":>14}' for w, h in sizes for k in (1, 2))
  print(header)
  print('-' * len(header))
  grain_rates = {}
  for name, fn in grain_fns.items():
    row = f'{name:<26}'
    for size in sizes:
      for k in (1, 2):
        rate = time_grain(fn, [clips[size]], k, args.grain_clips)
        grain_rates[(name, size, k)] = rate
        row += f'{rate:>14.2f}'
    print(row, flush=True)
  for size in sizes:
    for k in (1, 2):
      print(f'{size[0]}x{size[1]}, {k} worker(s): ours / decord = '
            f'{grain_rates[("ours", size, k)] / grain_rates[("decord", size, k)]:.2f}x')


if __name__ == '__main__':
  main()
