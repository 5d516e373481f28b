"""FrameCache returns the frames the decoder would, and serves repeats from memory."""

import numpy as np
import pytest

from t5video.data import decode
from t5video.data.frame_cache import FrameCache
from tests import videos


@pytest.mark.parametrize("num_frames,fps,count", [(4, 6, 12), (8, 10, 25), (5, 8, 3)])
def test_cache_equals_decoder(tmp_path, num_frames, fps, count):
  path = videos.write_test_video(str(tmp_path / "v.mp4"), videos.palette_frames(count, 48, 64), fps=fps)
  cache = FrameCache()
  for mode in ("uniform", "segment"):
    spec = decode.SamplingSpec(num_frames=num_frames, size=32, mode=mode)
    a = decode.decode_video(path, spec, rng=np.random.default_rng(3))
    b = cache.decode_video(path, spec, rng=np.random.default_rng(3))
    np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-6)
    np.testing.assert_array_equal(videos.frame_indices(a.frames, count),
                                  videos.frame_indices(b.frames, count))
    assert a.repeated == b.repeated
  assert cache.misses == 1 and cache.hits == 1


def test_cache_errors_like_decoder(tmp_path):
  cache = FrameCache()
  with pytest.raises(decode.VideoDecodeError) as e:
    cache.decode_video(str(tmp_path / "missing.mp4"), decode.SamplingSpec(size=32))
  assert e.value.kind == "missing"
  with pytest.raises(ValueError, match="centre"):
    cache.decode_video(str(tmp_path / "x.mp4"), decode.SamplingSpec(size=32, crop="random"))
