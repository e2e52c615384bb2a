"""Tests for sora_jax.monitoring: progress lines off a TTY, MetricWriter outputs, curve plots."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from sora_jax.monitoring import plots, progress, writer

# ----------------------------------------------------------------------------- progress


def test_progress_off_tty_prints_whole_lines_with_rate_and_eta():
  stream = io.StringIO()
  bar = progress.progress_bar(total=4, desc="train", unit="step", file=stream, non_tty_interval_s=0)
  for _ in range(4):
    bar.update(1)
    bar.set_postfix(loss=0.5)
  bar.close()
  text = stream.getvalue()
  assert "\r" not in text
  lines = text.strip().split("\n")
  assert lines[0].startswith("train: 0/4 (0%)")
  assert lines[-1].startswith("train: 4/4 (100%)")
  assert "step/s" in lines[-1] and "<" in lines[-1]  # rate and elapsed<remaining (ETA)
  assert "loss=0.5" in lines[-1]
  assert len(lines) == len(set(lines))  # no repeated identical lines


def test_progress_off_tty_is_sparse():
  stream = io.StringIO()
  for _ in progress.progress_bar(range(1000), desc="fast", file=stream, non_tty_interval_s=3600):
    pass
  lines = stream.getvalue().strip().split("\n")
  assert len(lines) == 2  # the start line and the final line only
  assert lines[-1].startswith("fast: 1000/1000")


def test_progress_on_tty_redraws_a_bar_in_place():
  class FakeTerminal(io.StringIO):
    def isatty(self):
      return True

  stream = FakeTerminal()
  for _ in progress.progress_bar(range(3), desc="tty", file=stream):
    pass
  text = stream.getvalue()
  assert "\r" in text and "|" in text and "tty: 100%" in text


def test_progress_resume_initial_and_disable():
  stream = io.StringIO()
  bar = progress.progress_bar(range(7), total=10, initial=3, desc="r", file=stream, non_tty_interval_s=0)
  assert sum(1 for _ in bar) == 7
  assert "r: 10/10" in stream.getvalue()
  quiet = io.StringIO()
  for _ in progress.progress_bar(range(3), disable=True, file=quiet):
    pass
  assert quiet.getvalue() == ""


def test_progress_interval_env(monkeypatch):
  monkeypatch.setenv("SORA_JAX_PROGRESS_INTERVAL", "oops")
  with pytest.raises(ValueError, match="SORA_JAX_PROGRESS_INTERVAL"):
    progress.progress_bar(range(2), file=io.StringIO())


# ----------------------------------------------------------------------------- writer


def _read_events(logdir):
  """Parses TensorBoard event files (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  events = []
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      length = int.from_bytes(data[offset : offset + 8], "little")
      payload = data[offset + 12 : offset + 12 + length]
      events.append(event_pb2.Event.FromString(payload))
      offset += 12 + length + 4
  return events


def test_format_line():
  line = writer.format_line(100, {"loss": 0.12341, "psnr": 28.1, "steps/s": 3.2, "lr": 1e-4, "n": 7})
  assert line == "step 100 | loss 0.1234 | psnr 28.1 | steps/s 3.2 | lr 0.0001 | n 7"


def test_metric_writer_writes_jsonl_tensorboard_and_lines(tmp_path, capsys):
  with writer.MetricWriter(tmp_path) as w:
    w.write_scalars(1, {"loss": np.float32(0.5), "psnr": 20.25})
    w.write_scalars(2, {"loss": 0.25})
    w.write_images(2, {"grid": np.zeros((8, 12, 3), np.uint8)})
    w.write_text(0, "config", "{}")
  out = capsys.readouterr().out
  assert "step 1 | loss 0.5 | psnr 20.25" in out and "step 2 | loss 0.25" in out
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2]
  assert records[0]["loss"] == 0.5 and records[0]["psnr"] == 20.25
  assert records[1]["minutes"] >= records[0]["minutes"] >= 0
  assert list(tmp_path.glob("events.out.tfevents.*"))

  events = _read_events(tmp_path)
  loss = [(e.step, v.simple_value) for e in events for v in e.summary.value if v.tag == "loss"]
  assert loss == [(1, 0.5), (2, 0.25)]
  images = [v.image for e in events for v in e.summary.value if v.tag == "grid"]
  assert len(images) == 1 and (images[0].height, images[0].width) == (8, 12)


def test_metric_writer_appends_and_continues_minutes(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"step": 5, "time": 0, "minutes": 12.5, "loss": 1.0}) + "\n{broken\n")
  w = writer.MetricWriter(tmp_path, tensorboard=False, print_lines=False)
  w.write_scalars(6, {"loss": 0.9})
  records = plots.read_metrics(path)
  assert [r["step"] for r in records] == [5, 6]
  assert 12.5 <= records[-1]["minutes"] < 13.0


def test_metric_writer_only_process_zero_writes(tmp_path, capsys):
  w = writer.MetricWriter(tmp_path / "p1", process_index=1)
  w.write_scalars(1, {"loss": 1.0})
  w.write_images(1, {"g": np.zeros((4, 4, 3), np.uint8)})
  w.close()
  assert not (tmp_path / "p1").exists()
  assert capsys.readouterr().out == ""


def test_metric_writer_errors(tmp_path):
  w = writer.MetricWriter(tmp_path, tensorboard=True, print_lines=False)
  with pytest.raises(ValueError, match="reserved"):
    w.write_scalars(1, {"step": 3})
  with pytest.raises(ValueError, match="'loss'.*one value"):
    w.write_scalars(1, {"loss": np.ones(3)})
  with pytest.raises(ValueError, match="uint8"):
    w.write_images(1, {"g": np.zeros((4, 4, 3), np.float32)})
  w.close()


# ----------------------------------------------------------------------------- plots


def _write_records(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_curve_sorts_and_last_record_wins(tmp_path):
  records = [{"step": 2, "loss": 3.0}, {"step": 1, "loss": 4.0}, {"step": 2, "loss": 2.0}, {"step": 3, "psnr": 20.0}]
  xs, ys = plots.curve(records, "loss")
  np.testing.assert_array_equal(xs, [1, 2])
  np.testing.assert_array_equal(ys, [4.0, 2.0])


def test_plot_curves_writes_png(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_records(path, [{"step": s, "minutes": s / 10, "loss": 1 / (s + 1), "psnr": 20 + s} for s in range(20)])
  out = plots.plot_curves(
    path, ["loss", "psnr"], tmp_path / "png" / "c.png", x="minutes", smoothing=0.5, log_y=["loss"]
  )
  with Image.open(out) as image:
    assert image.format == "PNG"
    width, height = image.size
  assert width > 300 and height > 300
  pixels = np.asarray(Image.open(out).convert("RGB"))
  assert (pixels.std(axis=(0, 1)) > 0).all()  # something was drawn


def test_plot_curves_errors(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_records(path, [{"step": 1, "loss": 1.0}])
  with pytest.raises(ValueError, match=r"no values for \['psnr'\].*available: \['loss'\]"):
    plots.plot_curves(path, ["psnr"], tmp_path / "x.png")
  with pytest.raises(ValueError, match="x must be"):
    plots.plot_curves(path, ["loss"], tmp_path / "x.png", x="epoch")
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plots.read_metrics(tmp_path / "missing" / "metrics.jsonl")
