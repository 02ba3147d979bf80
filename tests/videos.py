"""Small videos made on the fly with PyAV for tests (nothing binary is committed).

Each second of a video shows its own photo-like picture (smooth gradients plus noise, as
``tests.images`` draws them), so the frames sampled at different seconds, and those of
videos with different seeds, are different images.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

# Encoders the av wheel has (checked: libx264, libvpx, mpeg4), by container.
CODECS = {"mp4": "libx264", "webm": "libvpx", "matroska": "mpeg4", "avi": "mpeg4", "mov": "mpeg4"}
SUFFIXES = {"mp4": ".mp4", "webm": ".webm", "matroska": ".mkv", "avi": ".avi", "mov": ".mov"}


def picture(seed: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 215, 3)
    slope = rng.uniform(-1, 1, (3, 2))
    pixels = np.stack([base[c] + slope[c, 0] * x * 120 / w + slope[c, 1] * y * 120 / h for c in range(3)], axis=-1)
    pixels += rng.normal(0, 10, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def video_bytes(seed: int, *, fmt: str = "webm", seconds: int = 12, fps: int = 4, size: tuple[int, int] = (64, 48),
                rotation: int | None = None, creation_time: str | None = None) -> bytes:
    """A ``seconds``-long video in container ``fmt`` (mp4, webm, matroska, avi, mov)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        if creation_time:
            container.metadata["creation_time"] = creation_time
        stream = container.add_stream(CODECS[fmt], rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for second in range(seconds):
            frame = av.VideoFrame.from_ndarray(picture(seed * 1000 + second, size), format="rgb24")
            for _ in range(fps):
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_video(folder: Path, name: str, seed: int, **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(video_bytes(seed, **kwargs))
    return path
