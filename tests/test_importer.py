"""Importing your own videos: resampling, resize + crop, clip cutting, caption sources, corrupt files, the tool."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import base
from sora_jax.data import datasets, importer, pipeline, video_folder_builder
from sora_jax.media import video_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = importer.ClipSettings(num_frames=9, height=32, width=32, fps=8, stride=4)


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
  rows = [
    "path,caption,extra",
    "clip0.mp4,a gray fade,x",
    "clip1.mp4,another fade,y",
    "clip2.mp4,third,z",
    "nested/short.mp4,too short,w",
    "broken.mp4,a broken file,v",
  ]
  (folder / "captions.csv").write_text("\n".join(rows) + "\n")
  return folder


@pytest.fixture(scope="module")
def imported(videos_dir, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("imported_data"))
  builder, summary = video_folder_builder.import_video_folder(
    videos_dir,
    name="mine",
    captions=importer.CsvCaptions(videos_dir / "captions.csv"),
    settings=SETTINGS,
    data_dir=data_dir,
    validation_fraction=0.3,
  )
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


def test_import_happy_path_and_corrupt_file(imported, videos_dir):
  builder, summary, _ = imported
  # 40 frames at 16 fps -> 20 frames at 8 fps -> clips start at 0, 4, 8.
  assert sum(summary.clips.values()) == 9 and summary.videos_read == 4
  assert [os.path.basename(p) for p, _ in summary.skipped] == ["broken.mp4"]
  assert summary.too_short == [os.path.join("nested", "short.mp4")]
  assert set(builder.info.splits.keys()) == {"train", "validation"}
  with open(os.path.join(builder.data_dir, video_folder_builder.SUMMARY_FILE)) as f:
    assert "broken.mp4" in f.read()


def test_imported_clips_have_the_right_frames_and_captions(imported):
  _, _, data_dir = imported
  cfg = base.get_config().data
  cfg.dataset, cfg.builder_config, cfg.data_dir, cfg.num_frames, cfg.batch_size = (
    "video_folder",
    "mine",
    data_dir,
    9,
    2,
  )
  captions = {"clip0.mp4": "a gray fade", "clip1.mp4": "another fade", "clip2.mp4": "third"}
  clips = [ex for split in ("train", "validation") for ex in _all(datasets.load_data_source(cfg, split))]
  assert len(clips) == 9
  for ex in clips:
    assert ex["video"].shape == (9, 32, 32, 3) and ex["video"].dtype == np.uint8
    assert ex["caption"] == captions[ex["source_path"]]
    # Frame k of a clip starting at s is source frame 2 * (s + k) (16 -> 8 fps), brightness 6 * that + 10.
    expected = 6 * 2 * (ex["start_frame"] + np.arange(9)) + 10
    np.testing.assert_allclose(ex["video"].mean(axis=(1, 2, 3)), expected, atol=4)
  assert sorted({int(ex["start_frame"]) for ex in clips}) == [0, 4, 8]
  batch = next(pipeline.make_train_iterator(cfg, seed=0))
  assert batch["video"].shape == (2, 9, 32, 32, 3) and batch["caption"][0] in captions.values()


def _all(source):
  return [source[i] for i in range(len(source))]


def test_missing_csv_column_is_a_clear_error(tmp_path):
  (tmp_path / "c.csv").write_text("file,text\na.mp4,hello\n")
  with pytest.raises(ValueError, match=r"lacks column\(s\) \['path', 'caption'\]"):
    importer.CsvCaptions(tmp_path / "c.csv")


def test_missing_listed_file_is_a_clear_error(videos_dir, tmp_path):
  (tmp_path / "c.csv").write_text("path,caption\nclip0.mp4,ok\nnot_there.mp4,missing\n")
  with pytest.raises(FileNotFoundError, match="not_there.mp4"):
    video_folder_builder.import_video_folder(
      videos_dir,
      name="x",
      captions=importer.CsvCaptions(tmp_path / "c.csv"),
      settings=SETTINGS,
      data_dir=str(tmp_path / "data"),
    )
  assert not (tmp_path / "data" / "video_folder" / "x").exists() or not any(
    (tmp_path / "data" / "video_folder" / "x").rglob("*.array_record*")
  )


def test_existing_name_needs_overwrite(imported, videos_dir):
  _, _, data_dir = imported
  with pytest.raises(FileExistsError, match="--overwrite"):
    video_folder_builder.import_video_folder(
      videos_dir, name="mine", captions=importer.SidecarCaptions(), settings=SETTINGS, data_dir=data_dir
    )


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
  )
  source = builder.as_data_source(split="train")
  assert summary.clips == {"train": 6}  # a: 20 frames -> 4 clips of 5; b: 10 -> 2
  assert all(source[i]["caption"].decode().endswith("over 5 frames") for i in range(len(source)))
  with pytest.raises(ValueError, match="no callable"):
    importer.FunctionCaptions("my_captioner:nope")
  with pytest.raises(ValueError, match="exactly one caption source"):
    importer.make_caption_source(captions_csv="x.csv", sidecar=True)


def test_split_by_video_skips_unusable_validation_candidates():
  paths = [f"v{i}.mp4" for i in range(10)]
  splits = importer.split_videos(paths, 0.2, usable=lambda p: p not in ("v0.mp4", "v5.mp4"))
  assert len(splits["validation"]) == 2 and not {"v0.mp4", "v5.mp4"} & set(splits["validation"])
  assert set(splits["train"]) | set(splits["validation"]) == set(paths)
  assert set(importer.split_videos(paths, 0.0)) == {"train"}


def test_import_tool_end_to_end(videos_dir, tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "tools", "import_videos.py"),
      f"--videos_dir={videos_dir}",
      f"--captions={videos_dir / 'captions.csv'}",
      "--name=cli",
      f"--data_dir={tmp_path}",
      "--num_frames=9",
      "--height=32",
      "--width=32",
      "--fps=8",
      "--stride=4",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "skipped 1 unreadable file(s)" in result.stdout and "broken.mp4" in result.stdout
  assert "--config.data.builder_config=cli" in result.stdout
  bad = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "tools", "import_videos.py"),
      f"--videos_dir={videos_dir}",
      f"--captions={tmp_path / 'nope.csv'}",
      "--name=cli2",
      f"--data_dir={tmp_path}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode != 0 and "nope.csv" in bad.stderr and "does not exist" in bad.stderr
