"""Tests of t5video.data.decode on small real videos encoded on the fly.

Every frame of a test video has its own flat colour (``videos.palette``), so a
test can tell exactly which source frames a decode returned.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from t5video.data import decode as decode_lib
from t5video.data.decode import SamplingSpec, VideoDecodeError, decode_clip, decode_video, probe
from tests.videos import frame_indices, palette_frames, write_audio_only, write_test_video

N = 50  # frames per test video, 10 fps -> 5 s
FORMATS = [('mp4', 'h264'), ('webm', 'vp9'), ('avi', 'mpeg4'), ('mkv', 'h264')]


@pytest.fixture(scope='session')
def videos(tmp_path_factory):
  """The good videos (one per container) and one file per bad kind."""
  d = tmp_path_factory.mktemp('videos')
  frames = palette_frames(N)
  out = {}
  for ext, codec in FORMATS:
    out[ext] = write_test_video(str(d / f'v.{ext}'), frames, 10, codec, gop=12)
  out['long_gop'] = write_test_video(str(d / 'long_gop.mp4'), frames, 10, 'h264', gop=250)
  # A fixed texture on the colours: x264 then codes one I-frame and many B-frames.
  textured = frames.astype(np.int16) + np.random.default_rng(0).integers(
      -6, 7, frames.shape[1:], dtype=np.int16)[None]
  out['bframes'] = write_test_video(str(d / 'bframes.mp4'), np.clip(textured, 0, 255).astype(np.uint8),
                                    10, 'h264', gop=250)
  out['with_audio'] = write_test_video(str(d / 'with_audio.mkv'), frames, 10, 'h264', audio=True)
  out['short'] = write_test_video(str(d / 'short.mp4'), frames[:5], 10, 'h264')
  out['wide'] = write_test_video(str(d / 'wide.mp4'), palette_frames(10, 48, 96), 10, 'h264')
  good = open(out['mp4'], 'rb').read()
  (d / 'empty.mp4').write_bytes(b'')
  out['empty'] = str(d / 'empty.mp4')
  out['missing'] = str(d / 'does_not_exist.mp4')
  rand = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
  (d / 'random.mp4').write_bytes(rand)
  out['random'] = str(d / 'random.mp4')
  (d / 'truncated.mp4').write_bytes(good[:len(good) // 2])
  out['truncated'] = str(d / 'truncated.mp4')
  webm = open(out['webm'], 'rb').read()
  (d / 'truncated.webm').write_bytes(webm[:len(webm) // 3])
  out['truncated_webm'] = str(d / 'truncated.webm')
  garbled = bytearray(good)
  garbled[60:1200] = np.random.default_rng(1).integers(0, 256, 1140, dtype=np.uint8).tobytes()
  (d / 'garbled.mp4').write_bytes(bytes(garbled))
  out['garbled'] = str(d / 'garbled.mp4')
  out['audio'] = write_audio_only(str(d / 'audio.m4a'))
  # Containers whose only video stream names a codec FFmpeg does not know.
  avi = open(out['avi'], 'rb').read()
  assert avi.count(b'FMP4') == 2
  (d / 'unknown.avi').write_bytes(avi.replace(b'FMP4', b'ZQZQ'))
  out['unknown_avi'] = str(d / 'unknown.avi')
  mkv = open(out['mkv'], 'rb').read()
  assert mkv.count(b'V_MPEG4/ISO/AVC') == 1
  (d / 'unknown.mkv').write_bytes(mkv.replace(b'V_MPEG4/ISO/AVC', b'V_QQQQQ/QQQ/QQQ'))
  out['unknown_mkv'] = str(d / 'unknown.mkv')
  return out


SMALL = dict(size=32)


@pytest.mark.parametrize('ext', [e for e, _ in FORMATS])
def test_probe(videos, ext):
  info = probe(videos[ext])
  assert info.fps == pytest.approx(10.0)
  assert info.duration == pytest.approx(5.0, abs=0.11)
  assert info.num_frames == N
  assert (info.width, info.height) == (64, 48)


@pytest.mark.parametrize('ext', [e for e, _ in FORMATS])
def test_uniform_takes_segment_centres(videos, ext):
  frames, ts = decode_clip(videos[ext], SamplingSpec(num_frames=8, **SMALL))
  assert frames.dtype == np.uint8 and frames.shape == (8, 32, 32, 3)
  assert ts.dtype == np.float32
  want = np.floor((np.arange(8) + 0.5) * N / 8).astype(int)  # 3, 9, 15, ...
  np.testing.assert_array_equal(frame_indices(frames, N), want)
  np.testing.assert_allclose(ts, want / 10, atol=1e-4)


@pytest.mark.parametrize('ext', [e for e, _ in FORMATS])
def test_window_and_fps_mode(videos, ext):
  frames, ts = decode_clip(videos[ext], SamplingSpec(num_frames=4, **SMALL), start=1.0, end=2.0)
  np.testing.assert_array_equal(frame_indices(frames, N), [11, 13, 16, 18])
  np.testing.assert_allclose(ts, [1.1, 1.3, 1.6, 1.8], atol=1e-4)
  # 2 fps over 5 s: the centres 0.25, 0.75, ... s -> frames 2, 7, 12, ...
  frames, ts = decode_clip(videos[ext], SamplingSpec(mode='fps', fps=2, **SMALL))
  np.testing.assert_array_equal(frame_indices(frames, N), np.arange(10) * 5 + 2)
  np.testing.assert_allclose(ts, (np.arange(10) * 5 + 2) / 10, atol=1e-4)
  # max_frames thins evenly; the timestamps say which frames were taken.
  frames, ts = decode_clip(videos[ext], SamplingSpec(mode='fps', fps=2, max_frames=5, **SMALL))
  assert frames.shape[0] == 5
  np.testing.assert_allclose(ts, frame_indices(frames, N) / 10, atol=1e-4)


def test_long_gop_seek_back_and_forward(videos):
  # A single keyframe: every target is reached by decoding forward.
  frames, ts = decode_clip(videos['long_gop'], SamplingSpec(num_frames=8, **SMALL))
  np.testing.assert_array_equal(frame_indices(frames, N), np.floor((np.arange(8) + 0.5) * N / 8))
  # A late window in a 12-frame GOP file: the decoder seeks, and lands right.
  frames, ts = decode_clip(videos['mp4'], SamplingSpec(num_frames=2, **SMALL), start=4.0, end=4.4)
  np.testing.assert_array_equal(frame_indices(frames, N), [41, 43])


@pytest.mark.parametrize('policy', ['auto', 'never', 'always'])
@pytest.mark.parametrize('skip', [True, False])
def test_every_frame_exact_with_bframes(videos, policy, skip):
  # Each single frame reached by seeking or decoding forward, with or without
  # dropping non-reference frames on the way, is the right one.
  import av
  with av.open(videos['bframes']) as c:
    types = ''.join(' IPB'[int(f.pict_type)] for f in c.decode(video=0))
  assert types.count('B') > 10 and types.count('I') == 1, types
  spec = SamplingSpec(num_frames=1, seek_policy=policy, skip_nonref=skip, **SMALL)
  for k in range(N):
    frames, ts = decode_clip(videos['bframes'], spec, start=k / 10, end=k / 10 + 0.1)
    assert frame_indices(frames, N)[0] == k and ts[0] == pytest.approx(k / 10, abs=1e-4)
  frames, ts = decode_clip(videos['bframes'], SamplingSpec(num_frames=N, seek_policy=policy,
                                                           skip_nonref=skip, **SMALL))
  np.testing.assert_array_equal(frame_indices(frames, N), np.arange(N))


@pytest.mark.parametrize('ext', [e for e, _ in FORMATS])
def test_single_frames_after_seeks(videos, ext):
  # Backwards and forwards through the file, each decode seeking afresh.
  spec = SamplingSpec(num_frames=1, **SMALL)
  for k in [47, 3, 30, 12, 49, 0, 25]:
    frames, ts = decode_clip(videos[ext], spec, start=k / 10, end=k / 10 + 0.1)
    assert frame_indices(frames, N)[0] == k and ts[0] == pytest.approx(k / 10, abs=1e-4)
  # Several far-apart targets in one decode (seeks between them).
  frames, ts = decode_clip(videos[ext], SamplingSpec(num_frames=3, **SMALL))
  np.testing.assert_array_equal(frame_indices(frames, N), [8, 25, 41])


def test_decodes_only_what_is_needed(videos, monkeypatch):
  counted = []
  real_next = decode_lib._Decoder.next

  def counting_next(self):
    got = real_next(self)
    counted.append(got is not None)
    return got

  monkeypatch.setattr(decode_lib._Decoder, 'next', counting_next)
  # Frames 41 and 43 of a file with keyframes at most 12 frames apart: the
  # decoder seeks to the one before frame 41, not through the 44 frames before.
  frames, _ = decode_clip(videos['mp4'], SamplingSpec(num_frames=2, **SMALL), start=4.0, end=4.4)
  np.testing.assert_array_equal(frame_indices(frames, N), [41, 43])
  assert sum(counted) <= 12, sum(counted)
  counted.clear()
  decode_clip(videos['mp4'], SamplingSpec(num_frames=2, seek_policy='never', skip_nonref=False,
                                          **SMALL), start=4.0, end=4.4)
  assert sum(counted) >= 44


def test_segment_sampling_is_random_within_segments(videos):
  spec = SamplingSpec(num_frames=5, mode='segment', **SMALL)
  seen = set()
  for seed in range(6):
    frames, ts = decode_clip(videos['mp4'], spec, rng=np.random.default_rng(seed))
    idx = frame_indices(frames, N)
    assert np.all(idx // 10 == np.arange(5)), idx  # one frame from each 10-frame segment
    np.testing.assert_allclose(ts, idx / 10, atol=1e-4)
    seen.add(tuple(idx))
  assert len(seen) > 1
  a = decode_clip(videos['mp4'], spec, rng=np.random.default_rng(3))[1]
  b = decode_clip(videos['mp4'], spec, rng=np.random.default_rng(3))[1]
  np.testing.assert_array_equal(a, b)


def test_resize_crop_flip(videos):
  # 96x48 frames, left half bright: shows where crops and flips went.
  d = videos['wide'].rsplit('/', 1)[0]
  frames = np.zeros((4, 48, 96, 3), np.uint8)
  frames[:, :, :48] = 200
  path = write_test_video(d + '/halves.mp4', frames, 10, 'h264')
  out, _ = decode_clip(path, SamplingSpec(num_frames=2, size=24))  # resized 48x24, centre crop
  assert out.shape == (2, 24, 24, 3)
  assert out[:, :, :8].mean() > 150 and out[:, :, -8:].mean() < 50
  flips = []
  for seed in range(8):
    o, _ = decode_clip(path, SamplingSpec(num_frames=1, size=24, flip=True), rng=np.random.default_rng(seed))
    flips.append(o[0, :, :8].mean() < 100)
  assert any(flips) and not all(flips)
  lefts = set()
  for seed in range(8):
    o, _ = decode_clip(path, SamplingSpec(num_frames=1, size=24, crop='random'), rng=np.random.default_rng(seed))
    lefts.add(int((o[0, 12, :, 0] > 100).sum()))
  assert len(lefts) > 1  # different crop positions
  o, _ = decode_clip(path, SamplingSpec(num_frames=1, size=24, resize_short=30))
  assert o.shape == (1, 24, 24, 3)


def test_extra_streams_are_ignored(videos):
  frames, _ = decode_clip(videos['with_audio'], SamplingSpec(num_frames=4, **SMALL))
  assert frames.shape == (4, 32, 32, 3)


def test_too_short_repeat_and_error(videos):
  clip = decode_video(videos['short'], SamplingSpec(num_frames=8, **SMALL))
  assert clip.repeated and clip.available_frames == 5
  np.testing.assert_array_equal(frame_indices(clip.frames, N), [0, 0, 1, 2, 2, 3, 4, 4])
  np.testing.assert_allclose(clip.timestamps, [0, 0, .1, .2, .2, .3, .4, .4], atol=1e-4)
  assert not decode_video(videos['mp4'], SamplingSpec(num_frames=8, **SMALL)).repeated
  with pytest.raises(VideoDecodeError) as e:
    decode_clip(videos['short'], SamplingSpec(num_frames=8, short_policy='error', **SMALL))
  assert e.value.kind == 'too_short' and videos['short'] in str(e.value)
  with pytest.raises(VideoDecodeError) as e:
    decode_clip(videos['mp4'], SamplingSpec(**SMALL), start=7.0, end=9.0)
  assert e.value.kind == 'too_short'
  with pytest.raises(ValueError, match='before its start'):
    decode_clip(videos['mp4'], SamplingSpec(**SMALL), start=2.0, end=1.0)


@pytest.mark.parametrize('name,kind', [
    ('missing', 'missing'), ('empty', 'empty'), ('random', 'corrupt'),
    ('truncated', 'corrupt'), ('truncated_webm', 'corrupt'), ('garbled', 'corrupt'),
    ('audio', 'no_video_stream'), ('unknown_avi', 'unsupported_codec'),
    ('unknown_mkv', 'unsupported_codec'),
])
def test_bad_files_raise_their_kind(videos, name, kind):
  with pytest.raises(VideoDecodeError) as e:
    decode_clip(videos[name], SamplingSpec(**SMALL))
  assert e.value.kind == kind, str(e.value)
  assert e.value.path == videos[name] and videos[name] in str(e.value)
  # The error crosses process boundaries (Grain workers) intact.
  back = pickle.loads(pickle.dumps(e.value))
  assert (back.path, back.kind, str(back)) == (e.value.path, e.value.kind, str(e.value))
  if name not in ('truncated_webm', 'garbled'):  # these two fail only when decoded
    with pytest.raises(VideoDecodeError) as e2:
      probe(videos[name])
    assert e2.value.kind == kind


def test_directory_is_missing(tmp_path):
  with pytest.raises(VideoDecodeError) as e:
    decode_clip(str(tmp_path), SamplingSpec(**SMALL))
  assert e.value.kind == 'missing'


def test_timeout(videos, monkeypatch):
  with pytest.raises(VideoDecodeError) as e:  # FFmpeg's interrupt during open
    decode_clip(videos['mp4'], SamplingSpec(timeout_s=1e-9, **SMALL))
  assert e.value.kind == 'timeout'

  class Clock:  # each reading is one second later: the decode loop must notice
    t = 0.0

    def monotonic(self):
      self.t += 1.0
      return self.t

  monkeypatch.setattr(decode_lib, 'time', Clock())
  with pytest.raises(VideoDecodeError) as e:
    decode_clip(videos['long_gop'], SamplingSpec(timeout_s=5.0, **SMALL))
  assert e.value.kind == 'timeout' and 'time limit' in str(e.value)


def test_spec_validation():
  with pytest.raises(ValueError, match='mode'):
    SamplingSpec(mode='dense')
  with pytest.raises(ValueError, match='fps'):
    SamplingSpec(mode='fps')
  with pytest.raises(ValueError, match='resize_short'):
    SamplingSpec(size=224, resize_short=200)
  with pytest.raises(ValueError, match='kind'):
    VideoDecodeError('x.mp4', 'weird')


def test_random_zoom_scales_shifts_and_keeps_motion():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  np.testing.assert_array_equal(decode_lib.random_zoom(frames, (1.0, 1.0), rng), frames)  # factor 1: identity
  square = np.zeros((1, 32, 32, 3), np.uint8)
  square[0, 10:14, 20:24] = 255  # 16 bright pixels
  for factor, area in ((0.5, 4), (2.0, 64)):
    areas = [(decode_lib.random_zoom(square, (factor, factor), np.random.default_rng(s))[0, ..., 0] > 127).sum()
             for s in range(6)]
    if factor < 1:  # the whole frame stays in view: the square shrinks to a quarter
      assert all(abs(a - area) <= 3 for a in areas), areas
    else:  # the view may cut it, never enlarge it beyond factor^2
      assert max(areas) <= area + 12 and max(areas) >= area - 12, areas
  # One transform for every frame: the object moves by the same zoomed step between frames.
  moving = np.zeros((3, 32, 32, 3), np.uint8)
  for t in range(3):
    moving[t, 14:18, 8 + 4 * t:12 + 4 * t] = 255
  out = decode_lib.random_zoom(moving, (0.5, 0.5), np.random.default_rng(1))
  xs = [np.argwhere(out[t, ..., 0] > 127)[:, 1].mean() for t in range(3)]
  assert abs((xs[1] - xs[0]) - 2.0) < 0.6 and abs((xs[2] - xs[1]) - 2.0) < 0.6, xs
  with pytest.raises(ValueError, match='zoom'):
    SamplingSpec(zoom=(1.2, 0.8))
  assert SamplingSpec(zoom=(0.8, 1.25)).random


def test_zoom_in_decoder_cache_and_evaluation(videos):
  from t5video.data import frame_cache, pipeline  # pylint: disable=g-import-not-at-top
  spec = SamplingSpec(num_frames=4, size=32, mode='segment', zoom=(0.7, 1.4))
  a = decode_video(videos['mp4'], spec, rng=np.random.default_rng(5))
  b = frame_cache.FrameCache().decode_video(videos['mp4'], spec, rng=np.random.default_rng(5))
  assert a.frames.shape == (4, 32, 32, 3)
  np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-6)  # same draws in the same order
  assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 2
  assert pipeline._spec_for_eval(spec).zoom is None  # evaluation never zooms
