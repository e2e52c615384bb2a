"""The web app: a Gradio Blocks page over `VideoService`, one tab per Pipeline mode.

  python tools/app.py --workdir=runs/demo [--host=127.0.0.1 --port=7860]     # or: make app

Each tab has the prompt, negative prompt, seed (or a random one), steps, guidance, sampler, frames and
(text and loop) size, examples from the demo prompts, and a Generate button; the result is a playable mp4
at the size the model made, a GIF to download, the contact sheet, and the prompt as the model saw it after
prompt expansion. The progress bar counts the sampler's model evaluations (its per-step callback).

One model is in memory; every Generate button shares one queue slot (concurrency_id "sampler", limit 1),
so two samplings never run at once and the Pipeline's compiled functions are reused across requests.
Anything a person can get wrong (an empty prompt, a 2-frame video, a wrong size, an unreadable upload, a
mode this Pipeline lacks) is a message in the tab's status line; an unexpected failure is logged with its
traceback on the server and shown as one line, and the app keeps serving.

Needs the `[app]` extra (gradio); nothing else in sora_jax imports this module.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo

import gradio as gr  # noqa: E402

from sora_jax.app import service as service_lib  # noqa: E402
from sora_jax.app.service import MODES, BadInput, Request, VideoService  # noqa: E402

log = logging.getLogger(__name__)

# Tiny clips (32x32) shown large without blurring.
CSS = """
.pixelated video, .pixelated img { image-rendering: pixelated; }
.pixelated video { min-height: 256px; }
.status-line { min-height: 1.5em; }
"""
# Labels of the upload components, per input name of a mode.
UPLOAD_LABELS = {
  "video": "video to continue or edit (mp4, webm or GIF)",
  "start": "first clip (mp4, webm or GIF)",
  "end": "second clip (mp4, webm or GIF)",
}
# The handler's arguments after the mode's; a tab without one passes a gr.State holding its default.
FIELDS = (
  "prompt",
  "negative_prompt",
  "seed",
  "random_seed",
  "num_steps",
  "guidance_scale",
  "sampler",
  "num_frames",
  "size",
  "image",
  "video",
  "start",
  "end",
  "backward",
  "strength",
)


def _error_text(message: str) -> str:
  return f"**Cannot generate:** {message}"


def handle(service: VideoService, mode: str, values: dict, progress=None) -> tuple:
  """One click of a tab's Generate: (status, expanded prompt, mp4, GIF, contact sheet). Never raises."""
  empty = (None, None, None)
  try:
    request = Request(
      mode=mode,
      prompt=values.get("prompt") or "",
      negative_prompt=values.get("negative_prompt") or "",
      seed=None if values.get("random_seed") else values.get("seed"),
      num_steps=values.get("num_steps"),
      guidance_scale=values.get("guidance_scale"),
      sampler=values.get("sampler"),
      num_frames=values.get("num_frames"),
      size=values.get("size"),
      image=values.get("image"),
      video=values.get("video"),
      start=values.get("start"),
      end=values.get("end"),
      backward=bool(values.get("backward")),
      strength=values.get("strength") if values.get("strength") is not None else 0.7,
    )

    def on_progress(done: int, total: int):
      if progress is not None:
        if done == 0:
          progress(0.0, desc="starting (the first request of a size compiles the sampler)")
        else:
          progress(done / max(total, 1), desc=f"denoising: model evaluation {done}/{total}")

    result = service.generate(request, on_progress=on_progress)
  except BadInput as e:
    return (_error_text(str(e)), "", *empty)
  except Exception as e:  # the app keeps serving; the traceback goes to the server log only
    log.exception("generation failed (mode %s)", mode)
    message = f"something went wrong inside the app ({type(e).__name__}: {e}); see the server log."
    return (_error_text(message), "", *empty)
  return (result.message, result.expanded_prompt, result.mp4, result.gif, result.sheet)


def _tab(service: VideoService, mode: str) -> None:
  spec = MODES[mode]
  defaults = service.defaults
  fields: dict = {}
  gr.Markdown(spec.description)
  if not service.available(mode):
    gr.Markdown(f"⚠️ {service.unavailable_message(mode)}", elem_id=f"{mode}-unavailable")
  with gr.Row():
    with gr.Column(scale=1):
      if "image" in spec.inputs:
        fields["image"] = gr.Image(
          label="image (becomes the first frame)", type="numpy", image_mode="RGB", elem_id=f"{mode}-image"
        )
      for name in ("video", "start", "end"):
        if name in spec.inputs:
          fields[name] = gr.File(
            label=UPLOAD_LABELS[name], type="filepath", file_types=["video", ".gif"], elem_id=f"{mode}-{name}"
          )
      fields["prompt"] = gr.Textbox(
        label="prompt", placeholder=service.examples[0], lines=2, elem_id=f"{mode}-prompt", max_length=2000
      )
      fields["negative_prompt"] = gr.Textbox(
        label="negative prompt", value=defaults["negative_prompt"], elem_id=f"{mode}-negative", max_length=2000
      )
      if mode == "extend":
        fields["backward"] = gr.Checkbox(label="backwards (make what came before the clip)", value=False)
      if mode == "edit":
        fields["strength"] = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="strength (low keeps the video)")
      with gr.Row():
        fields["seed"] = gr.Number(label="seed", value=0, precision=0, minimum=0, elem_id=f"{mode}-seed")
        fields["random_seed"] = gr.Checkbox(label="random seed", value=False, elem_id=f"{mode}-random")
      with gr.Row():
        fields["num_steps"] = gr.Slider(
          1, service_lib.MAX_STEPS, value=defaults["num_steps"], step=1, label="steps", elem_id=f"{mode}-steps"
        )
        fields["guidance_scale"] = gr.Slider(
          0.0, service_lib.MAX_GUIDANCE, value=defaults["guidance_scale"], step=0.5, label="guidance"
        )
      with gr.Row():
        fields["sampler"] = gr.Dropdown(service.samplers, value=defaults["sampler"], label="sampler")
        if mode != "edit":  # an edit keeps its video's length
          frames = [str(n) for n in service.frame_counts]
          default_frames = str(defaults["num_frames"])
          fields["num_frames"] = gr.Dropdown(
            frames if default_frames in frames else [default_frames, *frames],
            value=default_frames,
            label="frames",
            elem_id=f"{mode}-frames",
          )
        if service.sized(mode):
          fields["size"] = gr.Dropdown(
            service.size_labels, value=defaults["size"], label="size (height x width)", elem_id=f"{mode}-size"
          )
      button = gr.Button("Generate", variant="primary", elem_id=f"{mode}-generate")
      gr.Examples([[p] for p in service.examples], inputs=[fields["prompt"]], label="examples")
    with gr.Column(scale=1):
      status = gr.Markdown("", elem_id=f"{mode}-status", elem_classes=["status-line"])
      expanded = gr.Textbox(
        label="prompt as the model saw it (after prompt expansion)", interactive=False, elem_id=f"{mode}-expanded"
      )
      video = gr.Video(
        label="video (mp4)", elem_id=f"{mode}-video", elem_classes=["pixelated"], autoplay=True, loop=True
      )
      gif = gr.File(label="GIF download", elem_id=f"{mode}-gif")
      sheet = gr.Image(label="contact sheet", type="filepath", elem_id=f"{mode}-sheet", elem_classes=["pixelated"])

  inputs = [fields[name] if name in fields else gr.State(None) for name in FIELDS]

  def run(*values, progress=gr.Progress()):  # noqa: B008 (gradio reads the default to inject the bar)
    return handle(service, mode, dict(zip(FIELDS, values)), progress)

  button.click(
    run,
    inputs=inputs,
    outputs=[status, expanded, video, gif, sheet],
    concurrency_limit=1,
    concurrency_id="sampler",
    api_name=f"generate_{mode}",
  )


def build_app(service: VideoService, title: str = "sora_jax") -> gr.Blocks:
  """The page: one tab per mode (MODES), all sharing one queue slot."""
  with gr.Blocks(title=title, analytics_enabled=False) as demo:
    sizes = ", ".join(service.size_labels)
    gr.Markdown(
      f"# {title}: text to video\n"
      f"Model: `{service.workdir}` · sizes {sizes} · frames {', '.join(map(str, service.frame_counts[:4]))}, ..."
    )
    with gr.Tabs():
      for mode, spec in MODES.items():
        with gr.Tab(spec.title, id=mode, elem_id=f"tab-{mode}"):
          _tab(service, mode)
  return demo


def launch(
  workdir: str,
  *,
  host: str = "127.0.0.1",
  port: int = 7860,
  out_dir: str | None = None,
  block: bool = True,
  warm_up: bool = True,
):
  """Loads the model once and serves the app (blocking unless block=False; then returns the Blocks).
  warm_up: sample once at the default settings before serving, so the first request reuses the compiled sampler."""
  from sora_jax.sampling.pipeline import Pipeline

  pipe = Pipeline.from_pretrained(workdir)
  service = VideoService(pipe, out_dir=out_dir, workdir=workdir)
  if warm_up:
    print("warming up: compiling the sampler at the default settings ...", flush=True)
    print(f"warmed up: {service.warm_up().message}", flush=True)
  demo = build_app(service)
  demo.queue(default_concurrency_limit=1)
  demo.launch(
    server_name=host,
    server_port=port,
    allowed_paths=[service.out_dir],
    prevent_thread_lock=not block,
    ssr_mode=False,
    css=CSS,
    quiet=False,
  )
  return demo
