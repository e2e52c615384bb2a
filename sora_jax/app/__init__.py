"""sora_jax.app: the web app over the Pipeline (tools/app.py, `make app`).

service.py  VideoService: one Pipeline, one request at a time, every mode, checked input, mp4/GIF/sheet out
web.py      the Gradio Blocks page over it (needs the [app] extra; nothing else imports gradio)
"""
