"""Importing your own videos: resampling, resize + crop, clip cutting, caption sources, corrupt files,
the train / validation / test split, bad input before any write, never destroying a dataset, keep-aspect
buckets, and the tool."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import base
from sora_jax.data import datasets, import_splits, importer, pipeline, video_folder_builder
from sora_jax.media import video_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = importer.ClipSettings(num_frames=9, height=32, width=32, fps=8, stride=4)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


def _frame_numbered_video(num_frames, height=48, width=64):
  """Frame i is a flat gray of brightness 6*i (survives H.264 well), so frames can be identified."""
  levels = (np.arange(num_frames) * 6 + 10).astype(np.uint8)
  return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


@pytest.fixture(scope="module")
def videos_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("videos")
  for i in range(3):
    video_io.write_mp4(folder / f"clip{i}.mp4", _frame_numbered_video(40), fps=16)  # 2.5 s
  (folder / "nested").mkdir()
  video_io.write_mp4(folder / "nested" / "short.mp4", _frame_numbered_video(6), fps=8)  # too short
  (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not really a video" * 20)
  (folder / "photo.mp4").write_bytes(PNG)  # a PNG renamed .mp4
  rows = [
    "path,caption",
    "clip0.mp4,a gray fade",
    "clip1.mp4,another fade",
    'clip2.mp4,"third, with a comma"',
    "nested/short.mp4,too short",
    "broken.mp4,a broken file",
    "photo.mp4,a photo",
  ]
  (folder / "captions.csv").write_text("\n".join(rows) + "\n")
  return folder


def _import(videos_dir, data_dir, name="mine", csv=None, **kwargs):
  kwargs = {"settings": SETTINGS, "verbose": False, **kwargs}
  return video_folder_builder.import_video_folder(
    videos_dir,
    name=name,
    captions=importer.CsvCaptions(csv or videos_dir / "captions.csv"),
    data_dir=str(data_dir),
    **kwargs,
  )


@pytest.fixture(scope="module")
def imported(videos_dir, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("imported_data"))
  builder, summary = _import(videos_dir, data_dir)
  return builder, summary, data_dir


def test_resample_indices():
  np.testing.assert_array_equal(importer.resample_indices(40, 16, 8), np.arange(20) * 2)
  np.testing.assert_array_equal(importer.resample_indices(4, 8, 16), [0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(importer.resample_indices(5, 0, 8), np.arange(5))  # unknown rate: as is
  thirty = importer.resample_indices(31, 30, 8)  # 1 s of 30 fps -> 9 frames at 8 fps
  assert len(thirty) == 9 and thirty[0] == 0 and thirty[-1] == 30


def test_resize_center_crop_keeps_the_centre():
  frames = np.zeros((2, 40, 80, 3), np.uint8)
  frames[:, :, :20] = 255  # left quarter white: cropped away from a 2:1 frame to a square
  frames[:, :, 30:50, 1] = 200  # a green centre band survives
  out = importer.resize_center_crop(frames, 16, 16)
  assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
  assert out[..., 0].max() < 40, "the white side band must be cropped away"
  assert out[:, :, 8, 1].min() > 150, "the centre must be kept"


def test_clip_starts():
  assert importer.clip_starts(20, 9, 4) == [0, 4, 8]
  assert importer.clip_starts(8, 9, 4) == []
  assert importer.clip_starts(18, 9, 9) == [0, 9]


# ------------------------------------------------------------------ a good import


def test_import_summary_names_skipped_files_and_the_held_out_footage(imported):
  builder, summary, _ = imported
  assert summary.videos_read == 4  # clip0-2 and the short one decode
  skipped = dict(summary.skipped)
  assert set(skipped) == {"broken.mp4", "photo.mp4"}
  assert "not a video: the file is a PNG image" in skipped["photo.mp4"], "a renamed PNG is not 'too short'"
  assert summary.too_short == [(os.path.join("nested", "short.mp4"), "6 frame(s) at 8 fps")]
  assert set(builder.info.splits.keys()) == {"train", "validation", "test"}
  # 3 usable videos are too few to hold out whole ones: the end of two of them is held out instead.
  # Each has 20 frames at 8 fps (2 non-overlapping clips of 9): clip0's last clip is test, clip1's validation.
  text = summary.describe()
  assert "split by time: only 3 usable video(s)" in text, text
  assert "clip0.mp4: train frames 0-10 (0.0-1.4 s), test frames 11-19 (1.4-2.5 s)" in text, text
  assert "clip1.mp4: train frames 0-10 (0.0-1.4 s), validation frames 11-19 (1.4-2.5 s)" in text, text
  assert "clip2.mp4: train frames 0-19" in text, text
  assert summary.clips == {"train": 5, "validation": 1, "test": 1}
  record = video_folder_builder.read_summary(builder)
  assert record["split_plan"]["method"] == "time" and "photo.mp4" in str(record["summary"]["skipped"])


def test_imported_clips_have_the_right_frames_and_captions(imported):
  _, _, data_dir = imported
  cfg = base.get_config().data
  cfg.dataset, cfg.builder_config, cfg.data_dir, cfg.num_frames, cfg.batch_size = "video_folder", "mine", data_dir, 9, 2
  captions = {"clip0.mp4": "a gray fade", "clip1.mp4": "another fade", "clip2.mp4": "third, with a comma"}
  frames_used = {}
  for split in ("train", "validation", "test"):
    for ex in _all(datasets.load_data_source(cfg, split)):
      assert ex["video"].shape == (9, 32, 32, 3) and ex["video"].dtype == np.uint8
      assert ex["caption"] == captions[ex["source_path"]]
      # Frame k of a clip starting at s is source frame 2 * (s + k) (16 -> 8 fps), brightness 6 * that + 10.
      expected = 6 * 2 * (ex["start_frame"] + np.arange(9)) + 10
      np.testing.assert_allclose(ex["video"].mean(axis=(1, 2, 3)), expected, atol=4)  # H.264 error of flat grays
      frames = set(range(ex["start_frame"], ex["start_frame"] + 9))
      frames_used.setdefault((ex["source_path"], split), set()).update(frames)
  for video in captions:
    train = frames_used[(video, "train")]
    for split in ("validation", "test"):
      assert not train & frames_used.get((video, split), set()), f"{video}: {split} shares frames with train"
  batch = next(pipeline.make_train_iterator(cfg, seed=0))
  assert batch["video"].shape == (2, 9, 32, 32, 3) and batch["caption"][0] in captions.values()


def _all(source):
  return [source[i] for i in range(len(source))]


# ------------------------------------------------------------------ splits


def test_split_by_video_with_enough_videos():
  frames = {f"v{i:02d}.mp4": 40 for i in range(20)}
  plan = import_splits.plan_splits(frames, 9, validation_fraction=0.1, test_fraction=0.1)
  assert plan.method == "video"
  held = {split: [s.path for s in plan.segments[split]] for split in ("validation", "test")}
  assert len(held["validation"]) == len(held["test"]) == 2 and not set(held["validation"]) & set(held["test"])
  train = [s.path for s in plan.segments["train"]]
  assert len(train) == 16 and not set(train) & set(held["validation"] + held["test"])
  assert all(s.start == 0 and s.stop == 40 for s in plan.segments["train"])
  lines = plan.describe(".", 8)
  assert lines[1].startswith("  validation (2 video(s)): v") and lines[-1] == "  train: the other 16 video(s)"
  # 9 videos are too few for 10 % to be one whole video: split by time.
  assert (
    import_splits.plan_splits(dict(list(frames.items())[:9]), 9, validation_fraction=0.1, test_fraction=0.1).method
    == "time"
  )


def test_split_by_time_keeps_a_training_clip_per_video_and_errors_when_impossible():
  plan = import_splits.plan_splits({"a": 100, "b": 30}, 9, validation_fraction=0.2, test_fraction=0.2)
  # 11 + 3 non-overlapping clips: 3 held out each (round(0.2 * 14)), dealt to the video with most left.
  held = {split: sum(s.stop - s.start for s in plan.segments[split]) // 9 for split in ("validation", "test")}
  assert held == {"validation": 3, "test": 3}
  for video, length in (("a", 100), ("b", 30)):
    parts = {split: [s for s in plan.segments[split] if s.path == video] for split in plan.segments}
    assert parts["train"][0].start == 0 and parts["train"][0].stop - parts["train"][0].start >= 9
    ends = sorted((s.start, s.stop) for ss in parts.values() for s in ss)
    assert ends[-1][1] == length and all(a[1] == b[0] for a, b in zip(ends, ends[1:])), ends  # tiled, no overlap
  with pytest.raises(ValueError, match=r"too little footage to hold out a test split.*--test_fraction=0"):
    import_splits.plan_splits({"a": 12, "b": 12}, 9, validation_fraction=0.0, test_fraction=0.1)
  only_train = import_splits.plan_splits({"a": 12}, 9, validation_fraction=0.0, test_fraction=0.0)
  assert set(only_train.segments) == {"train"}
  with pytest.raises(ValueError, match="leave footage for training"):
    import_splits.plan_splits({"a": 12}, 9, validation_fraction=0.5, test_fraction=0.5)


# ------------------------------------------------------------------ bad input, before any write


def _csv(tmp_path, content: bytes | str, name="c.csv"):
  path = tmp_path / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  return path


@pytest.mark.parametrize(
  "content,message",
  [
    ("file,text\na.mp4,hello\n", r"missing: \['path', 'caption'\], unknown: \['file', 'text'\]"),
    ("path,caption,extra\nclip0.mp4,hi,x\n", r"must have exactly \['path', 'caption'\].*unknown: \['extra'\]"),
    ("", "is empty; it needs a header line 'path,caption'"),
    ("path,caption\n", "lists no videos"),
    ("path,caption\nclip0.mp4,a red ball, bouncing\n", r"line 2: 3 fields.*double quotes"),
    ("path,caption\nclip0.mp4,x\n\nclip0.mp4,y\n", r"lists 'clip0.mp4' twice \(lines 2 and 4\)"),
    ("path,caption\nclip0.mp4,\n", "line 2: empty caption"),
    (b"path,caption\nclip0.mp4,caf\xe9\n", r"is not UTF-8: line 2, column 14 holds byte 0xe9"),
  ],
)
def test_bad_csv_is_a_clear_error_naming_the_file(videos_dir, tmp_path, content, message):
  path = _csv(tmp_path, content)
  with pytest.raises(ValueError, match=message) as error:
    importer.CsvCaptions(path).videos(videos_dir)
  assert str(path) in str(error.value)


def test_missing_csv_and_missing_listed_file_write_nothing(videos_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.csv' does not exist"):
    importer.CsvCaptions(tmp_path / "nope.csv")
  path = _csv(tmp_path, "path,caption\nclip0.mp4,ok\nnot_there.mp4,missing\n")
  with pytest.raises(FileNotFoundError, match="not_there.mp4"):
    _import(videos_dir, tmp_path / "data", name="x", csv=path)
  assert not (tmp_path / "data").exists()


def test_no_usable_video_is_an_error_that_names_each_file(videos_dir, tmp_path):
  path = _csv(tmp_path, "path,caption\nbroken.mp4,a\nphoto.mp4,b\nnested/short.mp4,c\n")
  with pytest.raises(ValueError, match="nothing was written") as error:
    _import(videos_dir, tmp_path / "data", name="x", csv=path)
  text = str(error.value)
  assert "photo.mp4: not a video: the file is a PNG image" in text and "broken.mp4" in text and "short.mp4" in text
  assert not (tmp_path / "data").exists()
  with pytest.raises(ValueError, match="dataset name 'my clips' is not valid"):
    _import(videos_dir, tmp_path / "data", name="my clips")


# ------------------------------------------------------------------ never destroy


def _files(folder):
  return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def test_existing_name_needs_overwrite(imported, videos_dir):
  _, _, data_dir = imported
  with pytest.raises(FileExistsError, match="--overwrite"):
    video_folder_builder.import_video_folder(
      videos_dir, name="mine", captions=importer.SidecarCaptions(), settings=SETTINGS, data_dir=data_dir
    )


def test_failed_overwrites_keep_the_old_dataset(videos_dir, tmp_path, monkeypatch):
  data_dir = tmp_path / "data"
  good = _csv(tmp_path, "path,caption\nclip0.mp4,a\nclip1.mp4,b\n", "good.csv")
  _import(videos_dir, data_dir, name="keep", csv=good)
  target = video_folder_builder.dataset_dir("keep", str(data_dir))
  before = _files(target)
  assert any(name.endswith(".array_record-00000-of-00001") for name, _ in before)
  missing = _csv(tmp_path, "path,caption\nclip0.mp4,a\nnot_there.mp4,b\n", "missing.csv")
  unreadable = _csv(tmp_path, "path,caption\nbroken.mp4,a\nphoto.mp4,b\n", "unreadable.csv")
  for csv, error in ((missing, FileNotFoundError), (unreadable, ValueError)):
    with pytest.raises(error):
      _import(videos_dir, data_dir, name="keep", csv=csv, overwrite=True)
    assert _files(target) == before
  # A crash in the middle of writing (here: the caption source fails on the third clip).
  calls = []

  def crash(path, clip):
    calls.append(path)
    if len(calls) == 3:
      raise RuntimeError("simulated crash while writing")
    return "x"

  monkeypatch.setattr(importer.CsvCaptions, "caption", lambda self, path, clip: crash(path, clip))
  with pytest.raises(RuntimeError, match="simulated crash"):
    _import(videos_dir, data_dir, name="keep", csv=good, overwrite=True)
  assert _files(target) == before and len(calls) == 3
  assert sorted(p.name for p in target.parent.iterdir()) == ["keep"], "no temporary folder is left behind"
  monkeypatch.undo()
  # A fresh name whose import fails leaves no folder that would block the name.
  monkeypatch.setattr(importer.CsvCaptions, "caption", lambda self, path, clip: crash(path, clip))
  calls.clear()
  with pytest.raises(RuntimeError):
    _import(videos_dir, data_dir, name="fresh", csv=good)
  monkeypatch.undo()
  assert not video_folder_builder.dataset_dir("fresh", str(data_dir)).exists()
  _import(videos_dir, data_dir, name="fresh", csv=good)
  # A successful overwrite replaces the data.
  _, summary = _import(videos_dir, data_dir, name="keep", csv=good, overwrite=True, test_fraction=0.0)
  assert set(video_folder_builder.load_builder("keep", str(data_dir)).info.splits.keys()) == {"train", "validation"}
  assert sorted(p.name for p in target.parent.iterdir()) == ["fresh", "keep"]


def test_leftovers_of_a_killed_import_are_cleaned_up_or_restored(videos_dir, tmp_path):
  import socket

  finished = subprocess.Popen(["true"])
  finished.wait()
  dead = f"{socket.gethostname()}.{finished.pid}"
  data_dir = tmp_path / "data"
  root = data_dir / "video_folder"
  good = _csv(tmp_path, "path,caption\nclip0.mp4,a\nclip1.mp4,b\n", "good.csv")
  _import(videos_dir, data_dir, name="old", csv=good)
  before = _files(root / "old")
  # Killed mid-swap: the old dataset was moved aside, the new one not yet in place; and a killed build.
  os.rename(root / "old", root / f".replaced-old.{dead}")
  (root / f".importing-old.{dead}-abc123" / "video_folder").mkdir(parents=True)
  _import(videos_dir, data_dir, name="other", csv=good)  # another name: nothing of 'old' is touched
  assert (root / f".replaced-old.{dead}").exists()
  with pytest.raises(FileExistsError):  # the restored dataset is there again, so no overwrite without asking
    _import(videos_dir, data_dir, name="old", csv=good)
  _import(videos_dir, data_dir, name="old", csv=good, overwrite=True)
  assert sorted(p.name for p in root.iterdir()) == ["old", "other"]
  assert [n for n, _ in _files(root / "old")] == [n for n, _ in before]


# ------------------------------------------------------------------ keep aspect


def test_keep_aspect_import_puts_each_video_in_its_nearest_bucket(tmp_path):
  assert importer.nearest_bucket(1080, 1920, [(32, 32), (32, 48), (48, 32)]) == (32, 48)
  assert importer.nearest_bucket(1920, 1080, [(32, 32), (32, 48), (48, 32)]) == (48, 32)
  assert importer.nearest_bucket(100, 110, [(32, 32), (32, 48), (48, 32)]) == (32, 32)
  assert importer.nearest_bucket(60, 60, [(32, 32), (64, 64)]) == (64, 64)  # a tie goes to the larger
  assert importer.parse_buckets("32x32, 32x48,48X32") == ((32, 32), (32, 48), (48, 32))
  with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
    importer.parse_buckets("32x")
  folder = tmp_path / "vids"
  shapes = {"wide.mp4": (36, 64), "tall.mp4": (64, 36), "square.mp4": (50, 50), "wide2.mp4": (40, 64)}
  for name, (h, w) in shapes.items():
    video = _frame_numbered_video(24, h, w)
    video[:, :, : w // 4, 0] = 255  # a red left quarter: kept (squeezed) only when the aspect is kept
    video_io.write_mp4(folder / name, video, fps=8)
  (folder / "captions.csv").write_text("path,caption\n" + "".join(f"{n},{n}\n" for n in shapes))
  settings = importer.ClipSettings(num_frames=9, fps=8, buckets=((32, 32), (32, 48), (48, 32)))
  builder, _ = _import(
    folder, tmp_path / "data", name="aspect", settings=settings, validation_fraction=0.0, test_fraction=0.0
  )
  assert builder.info.features["video"].shape == (9, None, None, 3)
  expected = {"wide.mp4": (32, 48), "wide2.mp4": (32, 48), "tall.mp4": (48, 32), "square.mp4": (32, 32)}
  for ex in _all(datasets.source_from_builder(builder, "train", "aspect")):
    assert ex["video"].shape == (9, *expected[ex["source_path"]], 3), ex["source_path"]
    if ex["source_path"] != "tall.mp4":
      assert ex["video"][:, :, :2, 0].min() > 200, "the left edge of a landscape video survives"
  cfg = base.get_config().data
  cfg.dataset, cfg.builder_config, cfg.data_dir = "video_folder", "aspect", str(tmp_path / "data")
  by_size = datasets.load_sources_by_size(cfg, "train")
  assert {size: len(source) for size, source in by_size.items()} == {(9, 32, 32): 2, (9, 32, 48): 4, (9, 48, 32): 2}
  for size, source in by_size.items():
    assert all(source[i]["video"].shape == (*size, 3) for i in range(len(source)))
  with pytest.raises(ValueError, match="several sizes"):
    datasets.stored_video_shape(datasets.load_data_source(cfg, "train"))


# ------------------------------------------------------------------ caption sources, the tool


def test_sidecar_and_function_caption_sources(tmp_path, monkeypatch):
  folder = tmp_path / "vids"
  folder.mkdir()
  video_io.write_mp4(folder / "a.mp4", _frame_numbered_video(20, 32, 32), fps=8)
  video_io.write_gif(folder / "b.gif", _frame_numbered_video(10, 32, 32), fps=8)
  with pytest.raises(FileNotFoundError, match="sidecar"):
    importer.SidecarCaptions().videos(folder)
  (folder / "a.txt").write_text("caption of a\n")
  (folder / "b.txt").write_text("caption of b")
  sidecar = importer.SidecarCaptions()
  assert [p.name for p in sidecar.videos(folder)] == ["a.mp4", "b.gif"]
  assert sidecar.caption(folder / "b.gif", None) == "caption of b"

  (tmp_path / "my_captioner.py").write_text(
    textwrap.dedent("""
      def brightness(clip):
        return f"brightness {int(clip.mean())} over {clip.shape[0]} frames"
  """)
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  builder, summary = video_folder_builder.import_video_folder(
    folder,
    name="fn",
    captions=importer.make_caption_source(captioner="my_captioner:brightness"),
    settings=importer.ClipSettings(num_frames=5, height=16, width=16, fps=8),
    data_dir=str(tmp_path / "d"),
    validation_fraction=0.0,
    test_fraction=0.0,
  )
  source = builder.as_data_source(split="train")
  assert summary.clips == {"train": 6}  # a: 20 frames -> 4 clips of 5; b: 10 -> 2
  assert all(source[i]["caption"].decode().endswith("over 5 frames") for i in range(len(source)))
  with pytest.raises(ValueError, match="no callable"):
    importer.FunctionCaptions("my_captioner:nope")
  with pytest.raises(ValueError, match="exactly one caption source"):
    importer.make_caption_source(captions_csv="x.csv", sidecar=True)


def _tool(*args):
  return subprocess.run(
    [sys.executable, os.path.join(REPO, "tools", "import_videos.py"), *args],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


def test_import_tool_end_to_end(videos_dir, tmp_path):
  result = _tool(
    f"--videos_dir={videos_dir}",
    f"--captions={videos_dir / 'captions.csv'}",
    "--name=cli",
    f"--data_dir={tmp_path}",
    "--num_frames=9",
    "--height=32",
    "--width=32",
    "--fps=8",
    "--stride=4",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "skipped 2 unreadable file(s)" in out and "broken.mp4" in out and "PNG image" in out
  assert "split by time" in out and "test frames 11-19" in out
  assert "--config.data.builder_config=cli" in out and "--config.data.height=32" in out
  assert "Downloading" not in out + result.stderr
  bad = _tool(
    f"--videos_dir={videos_dir}", f"--captions={tmp_path / 'nope.csv'}", "--name=cli2", f"--data_dir={tmp_path}"
  )
  assert bad.returncode != 0 and "nope.csv" in bad.stderr and "does not exist" in bad.stderr
  both = _tool(f"--videos_dir={videos_dir}", "--sidecar_captions", "--name=x", "--buckets=32x32,32x48", "--height=64")
  assert both.returncode != 0 and "either --buckets" in both.stderr
