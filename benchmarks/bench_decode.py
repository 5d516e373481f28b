"""Clips per second: t5video's sparse PyAV decoder vs torchcodec, decord2, decord.

Each clip is 8 frames at 224x224 (uniform sampling: the centre frame of 8 equal
segments, short side resized to 224, centre crop) from two H.264 files made
here with PyAV (libx264, preset medium, 30 fps):

  short  320x240, 10 s, keyframe every 250 frames (x264's default)
  long   1280x720, 30 s, keyframe every 300 frames (10 s: long GOPs, as in
         screen recordings and many web videos)

Contenders (whichever are installed; the missing ones are named):
  ours        ``t5video.data.decode.decode_clip`` (defaults: seek by the
              keyframe index only when a keyframe lies between the decode
              position and the target, skip non-reference frames before each
              target, AUTO threads, swscale scales + converts to RGB in one call)
  torchcodec  ``torchcodec.decoders.VideoDecoder(path, seek_mode='approximate',
              num_ffmpeg_threads=N, dimension_order='NHWC', transforms=[Resize,
              CenterCrop])`` + ``get_frames_at(indices)`` (resize and crop in
              the decoder, as its documentation recommends for sampling);
              N=1 and N=0 (FFmpeg picks) are both run, the better one counts
  decord2     ``decord.VideoReader(path, width, height, num_threads=N)``
              (decord scales while decoding) + ``get_batch(idx)`` + centre
              crop; N=1 and N=0
  decord      the same with decord 0.6.0 when decord2 is not on the path
              (both install the module ``decord``; see benchmarks/README.md)
  naive       PyAV: decode every frame, convert each to RGB, resize with PIL
              (single process only)

Two measurements:
  1. single process, one clip at a time: median (best) seconds per clip over
     ``--repeats`` interleaved rounds and CPU seconds per clip.
  2. the headline: through Grain (``MapDataset.source(paths).map(decode)
     .to_iter_dataset().mp_prefetch(num_workers=2)``), one decode at a time per
     worker. Each measurement starts a fresh loader, lets it deliver
     ``3 x workers`` clips (spawn, imports, warm-up) and times the next
     ``--grain-clips``; rounds are interleaved over the contenders
     (``--repeats``). Median clips/s per contender, and

       <size>: ours / best = N.NNx (best: <contender>)

Run (a shared machine: see docs/performance.md for how it was measured):

  .venv/bin/python benchmarks/bench_decode.py
  .venv/bin/python benchmarks/bench_decode.py --quick           # a smoke run
  .venv/bin/python benchmarks/bench_decode.py --decord2-path .venv/decord2
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import os
import statistics
import subprocess
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
# Optional contenders: guarded imports
# ---------------------------------------------------------------------------

# PyPI's torchcodec 0.17 wheel for Linux is the CUDA build: it links
# libtorch_cuda.so, libc10_cuda.so, libnvrtc.so.13 and libnvjpeg.so.13, which a
# CPU torch does not have. Its CPU decoding never calls into them except for one
# symbol; with --torchcodec-stubs empty stand-ins with those sonames are built
# (gcc) and loaded first. The CPU wheel (download.pytorch.org/whl/cpu) needs none.
_STUB_DIR = os.path.join(os.path.expanduser('~'), '.cache', 't5video_bench', 'torchcodec_stubs')
_STUBS = {'libnvrtc.so.13': '', 'libnvjpeg.so.13': '', 'libc10_cuda.so': '',
          'libtorch_cuda.so': 'void* aoti_torch_get_current_cuda_stream(void) { return 0; }\n'}


def _load_stubs() -> None:
  os.makedirs(_STUB_DIR, exist_ok=True)
  for name, code in _STUBS.items():
    so = os.path.join(_STUB_DIR, name)
    if not os.path.exists(so):
      c = so + '.c'
      with open(c, 'w') as f:
        f.write(code or 'int t5video_stub;\n')
      subprocess.run(['gcc', '-shared', '-fPIC', '-o', so, f'-Wl,-soname,{name}', c], check=True)
    ctypes.CDLL(so, mode=ctypes.RTLD_GLOBAL)


@functools.lru_cache(maxsize=None)
def torchcodec_module():
  """(module, None) or (None, why it is missing)."""
  try:
    import torch  # noqa: F401
    torch.set_num_threads(1)  # torchcodec's tensors only; decoding threads are its own
  except Exception as e:  # noqa: BLE001
    return None, f'torch: {e}'
  try:
    import torchcodec.decoders  # noqa: F401
    import torchcodec.transforms  # noqa: F401
    return torchcodec, None
  except ImportError as e:
    return None, f'not installed ({e})'
  except OSError as e:
    if os.environ.get('T5VIDEO_TORCHCODEC_STUBS') != '1':
      return None, f'cannot load ({str(e)[:120]}); try --torchcodec-stubs'
  try:
    _load_stubs()
    for m in [m for m in sys.modules if m.startswith('torchcodec')]:
      del sys.modules[m]
    import torchcodec  # noqa: F811
    import torchcodec.decoders  # noqa: F401
    import torchcodec.transforms  # noqa: F401
    return torchcodec, None
  except Exception as e:  # noqa: BLE001
    return None, f'cannot load even with stubs: {e}'


@functools.lru_cache(maxsize=None)
def decord_module():
  """(module, label, None) or (None, None, why it is missing)."""
  extra = os.environ.get('T5VIDEO_DECORD2_PATH')
  if extra and extra not in sys.path:
    sys.path.insert(0, extra)
  try:
    import decord
  except Exception as e:  # noqa: BLE001
    return None, None, f'not installed ({e})'
  major = int(str(getattr(decord, '__version__', '0')).split('.')[0] or 0)
  return decord, ('decord2' if major >= 2 else 'decord'), None


# ---------------------------------------------------------------------------
# Contenders (top-level functions: Grain pickles them into workers)
# ---------------------------------------------------------------------------


def uniform_indices(n: int) -> np.ndarray:
  return np.floor((np.arange(NUM_FRAMES) + 0.5) * n / NUM_FRAMES).astype(np.int64)


def _resized(width: int, height: int) -> tuple[int, int]:
  if width >= height:
    return round(width * SIZE / height), SIZE
  return SIZE, round(height * SIZE / width)


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


def decord_clip(path: str, num_threads: int = 0) -> np.ndarray:
  decord, _, why = decord_module()
  if decord is None:
    raise RuntimeError(why)
  info = probe(path)
  w, h = _resized(info.width, info.height)
  vr = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=num_threads)
  x = vr.get_batch(uniform_indices(len(vr))).asnumpy()  # [8, h, w, 3]
  y0, x0 = (h - SIZE) // 2, (w - SIZE) // 2
  return np.ascontiguousarray(x[:, y0:y0 + SIZE, x0:x0 + SIZE])


def torchcodec_clip(path: str, num_threads: int = 1, seek_mode: str = 'approximate') -> np.ndarray:
  tc, why = torchcodec_module()
  if tc is None:
    raise RuntimeError(why)
  from torchcodec.decoders import VideoDecoder
  from torchcodec.transforms import CenterCrop, Resize
  info = probe(path)  # the resize needs the frame size (decord_clip does the same)
  w, h = _resized(info.width, info.height)
  dec = VideoDecoder(path, seek_mode=seek_mode, num_ffmpeg_threads=num_threads,
                     dimension_order='NHWC', transforms=[Resize((h, w)), CenterCrop((SIZE, SIZE))])
  n = dec.metadata.num_frames
  batch = dec.get_frames_at(uniform_indices(n).tolist())
  return batch.data.numpy()  # [8, 224, 224, 3]


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


def time_single(fns: dict, path: str, repeats: int) -> dict:
  """Median, best seconds and median CPU seconds per clip, interleaved rounds."""
  times = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  for fn in fns.values():  # warm up (imports, page cache)
    fn(path)
  for _ in range(repeats):
    for name, fn in fns.items():
      t, c = time.perf_counter(), time.process_time()
      fn(path)
      times[name].append(time.perf_counter() - t)
      cpu[name].append(time.process_time() - c)
  return {name: (statistics.median(v), min(v), statistics.median(cpu[name]))
          for name, v in times.items()}


def _grain_rate(fn, path: str, num_workers: int, clips: int) -> float:
  """Clips/s of one fresh Grain loader: spawn, warm up, then time ``clips`` clips."""
  import grain
  warm = 3 * num_workers
  ds = grain.MapDataset.source([path] * (warm + clips)).map(fn).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                   per_worker_buffer_size=1))
  it = iter(ds)
  for _ in range(warm):  # start-up: workers spawn, import, warm up
    next(it)
  t = time.perf_counter()
  for _ in range(clips):
    x = next(it)
    assert x.shape == (NUM_FRAMES, SIZE, SIZE, 3), x.shape
  rate = clips / (time.perf_counter() - t)
  del it, ds
  gc.collect()
  return rate


def time_grain(fns: dict, path: str, num_workers: int, clips: int, repeats: int) -> dict:
  """Median and best clips/s per contender through Grain workers.

  Rounds are interleaved (every contender once per round) and every
  measurement has a fresh loader, so no idle loader decodes in the background.
  """
  rates = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      rates[name].append(_grain_rate(fn, path, num_workers, clips))
  return {name: (statistics.median(v), max(v)) for name, v in rates.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clip-dir', default=os.path.join(os.environ.get('TMPDIR', '/tmp'),
                                                         't5video_bench_clips'))
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--grain-clips', type=int, default=12)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--quick', action='store_true', help='fewer rounds and contenders')
  parser.add_argument('--no-single', action='store_true', help='skip the single-process table')
  parser.add_argument('--variants', action='store_true',
                      help='single process: also naive PyAV and ours with one knob changed')
  parser.add_argument('--grain-contenders', default='ours,torchcodec threads=1,torchcodec threads=0,'
                      'decord2 threads=1,decord threads=1',
                      help='comma-separated names run through Grain (those installed)')
  parser.add_argument('--sizes', default='short,long')
  parser.add_argument('--decord2-path', default=None,
                      help='a folder holding decord2 (pip install --target), put first on sys.path')
  parser.add_argument('--torchcodec-stubs', action='store_true',
                      help='load empty CUDA stand-ins so that the CUDA torchcodec wheel loads with CPU torch')
  args = parser.parse_args()
  if args.quick:
    args.repeats, args.grain_clips = 2, 6
  # Environment variables reach Grain's spawned workers.
  if args.decord2_path:
    os.environ['T5VIDEO_DECORD2_PATH'] = os.path.abspath(args.decord2_path)
  if args.torchcodec_stubs:
    os.environ['T5VIDEO_TORCHCODEC_STUBS'] = '1'

  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags.

  os.makedirs(args.clip_dir, exist_ok=True)
  size_defs = {'short': (320, 240, 10.0, 250), 'long': (1280, 720, 30.0, 300)}
  sizes = [s for s in args.sizes.split(',') if s]
  clips = {}
  for name in sizes:
    w, h, seconds, gop = size_defs[name]
    path = os.path.join(args.clip_dir, f'h264_{w}x{h}_{seconds:g}s_30fps_gop{gop}.mp4')
    if not os.path.exists(path):
      t = time.perf_counter()
      make_clip(path, w, h, seconds, 30, gop)
      print(f'generated {path} in {time.perf_counter() - t:.1f} s', flush=True)
    clips[name] = path

  contenders = {'ours': ours}
  missing = []
  tc, why = torchcodec_module()
  if tc is None:
    missing.append(f'torchcodec: {why}')
  else:
    contenders['torchcodec threads=1'] = functools.partial(torchcodec_clip, num_threads=1)
    contenders['torchcodec threads=0'] = functools.partial(torchcodec_clip, num_threads=0)
    if args.variants:
      contenders['torchcodec exact threads=1'] = functools.partial(
          torchcodec_clip, num_threads=1, seek_mode='exact')
  dec, label, why = decord_module()
  if dec is None:
    missing.append(f'decord2/decord: {why}')
  else:
    if label == 'decord':
      missing.append('decord2: not on sys.path (--decord2-path); decord 0.6 runs instead')
    contenders[f'{label} threads=1'] = functools.partial(decord_clip, num_threads=1)
    contenders[f'{label} threads=0'] = functools.partial(decord_clip, num_threads=0)
  versions = [f'PyAV {av.__version__}']
  if tc is not None:
    versions.append(f'torchcodec {tc.__version__}')
  if dec is not None:
    versions.append(f'{label} {dec.__version__}')

  print(f'\n{NUM_FRAMES} frames at {SIZE}x{SIZE} per clip; ' + '; '.join(
      f'{n}: {size_defs[n][0]}x{size_defs[n][1]} {size_defs[n][2]:g} s, keyframe every '
      f'{size_defs[n][3]} frames' for n in sizes))
  print(f'{os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f}; '
        f'{", ".join(versions)}')
  for m in missing:
    print(f'missing: {m}')

  if not args.no_single:
    single = dict(contenders)
    if args.variants:
      single['naive PyAV'] = naive
      single['ours seek=never'] = functools.partial(ours, seek_policy='never')
      single['ours threads=NONE'] = functools.partial(ours, thread_type='NONE')
    print(f'\nSingle process, median (best) over {args.repeats} rounds')
    header = f'{"contender":<28}' + ''.join(f'{f"{n} clips/s":>22}{"cpu s/clip":>12}' for n in sizes)
    print(header)
    print('-' * len(header))
    results = {n: time_single(single, clips[n], args.repeats) for n in sizes}
    for name in single:
      row = f'{name:<28}'
      for n in sizes:
        med, best, cpu = results[n][name]
        row += f'{1 / med:>12.2f} ({1 / best:6.2f}){cpu:>12.3f}'
      print(row, flush=True)
    print(f'load average now {os.getloadavg()[0]:.2f}')

  print(f'\nGrain MapDataset -> mp_prefetch({args.workers} workers), clips/s, median (best) '
        f'over {args.repeats} interleaved rounds of {args.grain_clips} clips')
  wanted = set(args.grain_contenders.split(','))
  grain_fns = {k: v for k, v in contenders.items() if k in wanted}
  header = f'{"contender":<28}' + ''.join(f'{n:>22}' for n in sizes)
  print(header)
  print('-' * len(header))
  rates = {}
  loads = []
  for n in sizes:
    rates[n] = time_grain(grain_fns, clips[n], args.workers, args.grain_clips, args.repeats)
    loads.append(os.getloadavg()[0])
  for name in grain_fns:
    print(f'{name:<28}' + ''.join(f'{rates[n][name][0]:>13.2f} ({rates[n][name][1]:6.2f})'
                                  for n in sizes))
  print(f'load average after each size: {", ".join(f"{x:.2f}" for x in loads)}')
  print()
  for n in sizes:
    others = {k: v[0] for k, v in rates[n].items() if k != 'ours'}
    if not others:
      print(f'{n}: no contender installed')
      continue
    best = max(others, key=others.get)
    print(f'{n} ({size_defs[n][0]}x{size_defs[n][1]}), {args.workers} workers: '
          f'ours / best = {rates[n]["ours"][0] / others[best]:.2f}x (best: {best})')


if __name__ == '__main__':
  main()
