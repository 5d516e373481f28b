"""Tests of the dataset-layout readers on fixture files in the published formats."""

from __future__ import annotations

import os
import shutil

import pytest

from t5video.data import layouts
from t5video.data.layouts import AnnotationError
from t5video.data.records import Moment, VideoRecord

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'layouts')


def _copy(tmp_path, name):
  dst = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), dst)
  return dst


def _touch(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  open(path, 'wb').close()


def test_msrvtt():
  root = os.path.join(FIXTURES, 'msrvtt')
  train = layouts.read_msrvtt(root, 'train')
  assert [r.video_id for r in train] == ['video0', 'video1']
  r = train[0]
  assert r.captions == ['a red sports car drives down a road', 'a car is shown']  # sen_id order
  assert r.label == '9' and r.split == 'train'
  assert r.path == os.path.join(root, 'TrainValVideo', 'video0.mp4')
  assert r.extra['start_time'] == 137.72 and r.extra['end_time'] == 149.44
  assert r.start is None and r.end is None
  val = layouts.read_msrvtt(root, 'val')
  assert [(v.video_id, v.split, v.label) for v in val] == [('video6513', 'val', '2')]
  test = layouts.read_msrvtt(root, 'test')
  assert test[0].path == os.path.join(root, 'TestVideo', 'video7010.mp4')
  assert len(test[0].captions) == 2
  assert len(layouts.read_msrvtt(root, 'all')) == 4
  assert layouts.read_dataset('msrvtt', root, 'validate') == val


def test_msrvtt_errors_name_the_key(tmp_path):
  root = _copy(tmp_path, 'msrvtt')
  f = root / 'train_val_videodatainfo.json'
  good = f.read_text()
  f.write_text(good.replace('"video_id": "video1", "start time"', '"start time"'))
  with pytest.raises(AnnotationError, match=r'train_val_videodatainfo\.json: videos\[1\]: '
                     r"missing key 'video_id'"):
    layouts.read_msrvtt(str(root), 'train')
  f.write_text(good.replace('"category": 16', '"category": "food"'))
  with pytest.raises(AnnotationError, match=r"videos\[1\]: key 'category' must be int"):
    layouts.read_msrvtt(str(root), 'train')
  f.write_text('{"videos": [}')
  with pytest.raises(AnnotationError, match=r'train_val_videodatainfo\.json:1: invalid JSON'):
    layouts.read_msrvtt(str(root), 'train')


def test_vatex(tmp_path):
  root = _copy(tmp_path, 'vatex')
  _touch(str(root / 'videos' / 'a_b_c_000005_000015.webm'))
  recs = layouts.read_vatex(str(root), 'train')
  assert [r.video_id for r in recs] == ['Ptf_2VRj-V0_000122_000132', 'a_b_c_000005_000015']
  assert recs[0].captions[0] == 'People wearing harnesses are climbing a rock wall.'
  assert recs[0].extra['chCap'][0] == '一群人在攀岩。'
  assert recs[0].extra['youtube_id'] == 'Ptf_2VRj-V0'
  assert (recs[0].extra['source_start'], recs[0].extra['source_end']) == (122.0, 132.0)
  assert recs[1].extra['youtube_id'] == 'a_b_c'  # ids with '_' split from the right
  assert recs[1].path.endswith('a_b_c_000005_000015.webm')  # the extension that exists
  assert recs[0].path.endswith('Ptf_2VRj-V0_000122_000132.mp4') and not os.path.exists(recs[0].path)
  test = layouts.read_dataset('vatex', str(root), 'test', video_dir=str(tmp_path / 'v'))
  assert test[0].split == 'test' and 'chCap' not in test[0].extra
  f = root / 'vatex_training_v1.0.json'
  f.write_text('[{"videoID": "x_000001_000002", "enCap": ["ok", 3]}]')
  with pytest.raises(AnnotationError, match=r'vatex_training_v1\.0\.json: \[0\]: enCap\[1\] must be str'):
    layouts.read_vatex(str(root), 'train')
  f.write_text('[{"videoID": "nodigits", "enCap": []}]')
  with pytest.raises(AnnotationError, match=r'\[0\]\.videoID'):
    layouts.read_vatex(str(root), 'train')


def test_kinetics_finds_videos_in_common_places(tmp_path):
  root = _copy(tmp_path, 'kinetics')
  vids = root / 'videos'
  _touch(str(vids / '---QUuC4vJs_000003_000013.mp4'))  # flat
  _touch(str(vids / 'playing guitar' / '--1DO2V4K74_000047_000057.mp4'))  # <label>/
  _touch(str(vids / 'train' / 'air_drumming' / '--nQbRBEz2s_000104_000114.mkv'))  # <split>/<label>/
  recs = layouts.read_kinetics_csv(str(root / 'train.csv'), str(vids))
  assert [r.label for r in recs] == ['abseiling', 'playing guitar', 'playing guitar', 'air drumming']
  assert os.path.exists(recs[0].path) and os.path.exists(recs[1].path) and os.path.exists(recs[3].path)
  assert recs[3].path.endswith('--nQbRBEz2s_000104_000114.mkv')
  # Absent video: a record whose path does not exist, not an error.
  assert not os.path.exists(recs[2].path)
  assert recs[2].path == os.path.join(str(vids), 'playing guitar', '-0eAXp_mkQc_000125_000135.mp4')
  assert recs[0].extra['time_start'] == 3.0 and recs[0].video_id == '---QUuC4vJs_000003_000013'
  val = layouts.read_dataset('kinetics', str(root), 'val', video_root=str(vids))
  assert [r.split for r in val] == ['val', 'val']
  test = layouts.read_kinetics_csv(str(root / 'test_k700.csv'), str(vids))
  assert test[0].label is None and test[0].split == 'test'
  assert layouts.read_kinetics_csv(str(root / 'train.csv'), str(vids), split='val') == []


@pytest.mark.parametrize('line,message', [
    ('abseiling,abc,three,13,train', r"train\.csv:3: column 'time_start' must be a number"),
    ('abseiling,abc,3,13,train,extra', r'train\.csv:3: 6 fields, the header has 5'),
    ('abseiling,abc,13,3,train', r'train\.csv:3: end 3\.0 is before start 13\.0'),
    ('abseiling,,3,13,train', r'train\.csv:3: empty youtube_id'),
])
def test_kinetics_errors_name_the_line(tmp_path, line, message):
  f = tmp_path / 'train.csv'
  f.write_text('label,youtube_id,time_start,time_end,split\nabseiling,ok,1,2,train\n' + line + '\n')
  with pytest.raises(AnnotationError, match=message):
    layouts.read_kinetics_csv(str(f), str(tmp_path))
  f.write_text('label,youtube_id,split\nx,y,train\n')
  with pytest.raises(AnnotationError, match=r"train\.csv:1: the header lacks column\(s\) \['time_start'"):
    layouts.read_kinetics_csv(str(f), str(tmp_path))


def test_qvhighlights():
  root = os.path.join(FIXTURES, 'qvhighlights')
  recs = layouts.read_qvhighlights(os.path.join(root, 'highlight_val_release.jsonl'),
                                   os.path.join(root, 'videos'))
  a, b = recs
  assert a.video_id == '2579' and a.split == 'val' and a.duration == 150.0
  assert a.path == os.path.join(root, 'videos', 'NUsG9BgSes0_210.0_360.0.mp4')
  q = 'A girl and her mother cooked while talking with each other on facetime.'
  assert a.moments == [Moment(0.0, 10.0, q)]
  assert len(a.saliency) == 75  # one value per 2-s clip of a 150-s video
  assert a.saliency[:6] == pytest.approx([4 / 3, 2.0, 3.0, 4.0, 1.0, 0.0])
  assert sum(a.saliency[5:]) == 0.0
  assert a.extra['saliency_clip_s'] == 2.0 and a.extra['vid'] == 'NUsG9BgSes0_210.0_360.0'
  assert b.saliency == pytest.approx([0.0, 3.0, 0.0, 0.0, 1.0])
  assert [(m.start, m.end) for m in b.moments] == [(2.0, 4.0), (8.0, 9.0)]
  test = layouts.read_dataset('qvhighlights', root, 'test')
  assert test[0].split == 'test' and test[0].moments == [] and test[0].saliency == []


@pytest.mark.parametrize('row,message', [
    ('{"qid": 1, "query": "q", "vid": "v", "duration": 10', r'bad\.jsonl:2: invalid JSON'),
    ('{"qid": 1, "vid": "v", "duration": 10}', r"bad\.jsonl:2: missing key 'query'"),
    ('{"qid": 1, "query": "q", "vid": "v", "duration": "10"}', r"bad\.jsonl:2: key 'duration' must be a finite number"),
    ('{"qid": 1, "query": "q", "vid": "v", "duration": 10, "relevant_clip_ids": [7], "saliency_scores": [[1,1,1]]}',
     r'bad\.jsonl:2: relevant_clip_ids\[0\]=7 is not a clip index in \[0, 5\)'),
    ('{"qid": 1, "query": "q", "vid": "v", "duration": 10, "relevant_clip_ids": [1], "saliency_scores": []}',
     r'bad\.jsonl:2: 1 relevant_clip_ids but 0 saliency_scores'),
    ('{"qid": 1, "query": "q", "vid": "v", "duration": 10, "relevant_windows": [[5]]}',
     r'bad\.jsonl:2: relevant_windows\[0\] must be \[start, end\]'),
    ('[1, 2]', r'bad\.jsonl:2: expected a JSON object'),
])
def test_qvhighlights_errors_name_the_line(tmp_path, row, message):
  f = tmp_path / 'bad.jsonl'
  f.write_text('{"qid": 0, "query": "fine", "vid": "v0", "duration": 4}\n' + row + '\n')
  with pytest.raises(AnnotationError, match=message):
    layouts.read_qvhighlights(str(f), str(tmp_path))


def test_generic_jsonl_and_csv_agree():
  root = os.path.join(FIXTURES, 'generic')
  j = layouts.read_generic(os.path.join(root, 'annotations.jsonl'))
  assert len(j) == 3
  cat = j[0]
  assert cat.path == os.path.join(root, 'clips', 'cat.mp4') and cat.video_id == 'clips/cat'
  assert cat.captions == ['a cat jumps onto a sofa'] and cat.label == 'jump'
  assert cat.tags == ['cat', 'indoor'] and (cat.start, cat.end) == (1.0, 4.5)
  assert cat.metadata == {'objects': 'cat, sofa', 'background': 'living room'}
  assert cat.subtitle == 'look at her go' and cat.moments == [Moment(2.0, 3.0, 'the cat leaps')]
  assert cat.saliency == [0.0, 1.0, 2.5] and cat.extra == {'camera': 'phone'}
  assert j[1].video_id == 'dog01' and j[1].split == 'val' and j[1].duration == 8.0
  assert j[1].captions == ['a dog runs', 'a dog is running in a park']
  assert j[2].path == '/abs/videos/bird.mkv' and j[2].split == 'test'
  c = layouts.read_generic(os.path.join(root, 'annotations.csv'), root='/data')
  assert c[0].path == '/data/clips/cat.mp4'
  assert c[0].captions == ['a cat jumps onto a sofa', 'the cat leaps', 'a cat on a couch']
  for key in ('label', 'tags', 'start', 'end', 'metadata', 'moments', 'saliency', 'extra'):
    assert getattr(c[0], key) == getattr(cat, key), key
  assert c[1].captions == ['a dog runs'] and c[1].metadata == {'objects': 'dog'}
  assert c[1].start is None and c[1].tags == []
  val = layouts.read_dataset('generic', root, 'val')
  assert [r.video_id for r in val] == ['dog01']
  rt = VideoRecord.from_json(cat.to_json())
  assert rt == cat


@pytest.mark.parametrize('row,message', [
    ('{"caption": "x"}', r"ann\.jsonl:2: missing key 'path'"),
    ('{"path": "a.mp4", "captions": "x"}', r"ann\.jsonl:2: key 'captions' must be list"),
    ('{"path": "a.mp4", "tags": ["a", 1]}', r'ann\.jsonl:2: tags\[1\] must be str'),
    ('{"path": "a.mp4", "metadata": {"k": 1}}', r"ann\.jsonl:2: metadata\['k'\] must be str"),
    ('{"path": "a.mp4", "moments": [{"start": 1}]}', r"ann\.jsonl:2: missing key 'end' \(in moments\[0\]\)"),
    ('{"path": "a.mp4", "start": 3, "end": 1}', r'ann\.jsonl:2: end 1\.0 is before start 3\.0'),
    ('{"path": "a.mp4", "saliency": [1, "x"]}', r'ann\.jsonl:2: saliency\[1\] must be a number'),
    ('{"path": 5}', r"ann\.jsonl:2: key 'path' must be str"),
    ('not json', r'ann\.jsonl:2: invalid JSON'),
])
def test_generic_jsonl_errors(tmp_path, row, message):
  f = tmp_path / 'ann.jsonl'
  f.write_text('{"path": "ok.mp4"}\n' + row + '\n')
  with pytest.raises(AnnotationError, match=message):
    layouts.read_generic(str(f))


def test_generic_csv_errors(tmp_path):
  f = tmp_path / 'ann.csv'
  f.write_text('path,start,moments\nok.mp4,,\nb.mp4,soon,\n')
  with pytest.raises(AnnotationError, match=r"ann\.csv:3: column 'start' must be a number"):
    layouts.read_generic(str(f))
  f.write_text('path,moments\nok.mp4,\nb.mp4,"[{""start"": 1}]"\n')
  with pytest.raises(AnnotationError, match=r"ann\.csv:3: missing key 'end'"):
    layouts.read_generic(str(f))
  f.write_text('caption\nhello\n')
  with pytest.raises(AnnotationError, match=r"ann\.csv:1: the header lacks column\(s\) \['path'\]"):
    layouts.read_generic(str(f))


def test_dispatch_errors(tmp_path):
  with pytest.raises(ValueError, match='unknown layout'):
    layouts.read_dataset('youcook', str(tmp_path), 'train')
  with pytest.raises(FileNotFoundError, match='train.csv'):
    layouts.read_dataset('kinetics', str(tmp_path), 'train')
  with pytest.raises(FileNotFoundError, match='annotation file not found'):
    layouts.read_dataset('msrvtt', str(tmp_path), 'train')
