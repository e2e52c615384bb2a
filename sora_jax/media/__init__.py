"""Video files and pictures of videos: mp4/GIF writing, reading, contact sheets, uint8 conversion.

from sora_jax.media import write_mp4, write_gif, read_video, save_contact_sheet
"""

from sora_jax.media.contact_sheet import (
  make_comparison_image,
  make_grid_image,
  save_comparison_sheet,
  save_contact_sheet,
)
from sora_jax.media.convert import to_float, to_uint8
from sora_jax.media.video_io import VideoReadError, read_video, write_gif, write_mp4, write_video

__all__ = [
  "VideoReadError",
  "read_video",
  "write_mp4",
  "write_gif",
  "write_video",
  "save_contact_sheet",
  "save_comparison_sheet",
  "make_grid_image",
  "make_comparison_image",
  "to_uint8",
  "to_float",
]
