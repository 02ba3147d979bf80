"""Sampling frames from videos with PyAV, and the Range header of GET /api/videos/{id}/original:
videos made here, damaged ones included."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from pgclip.api.videos import RangeNotSatisfiable, byte_range
from pgclip.db.videos import clock
from pgclip.workers.video import VideoRejected, is_video, probe_video, sample_frames, sniff
from tests.videos import picture, video_bytes


def frames(data: bytes, **kwargs):
    info = probe_video(data, **kwargs)
    return info, list(sample_frames(data, info, **{k: v for k, v in kwargs.items() if k == "max_frames"}))


@pytest.mark.parametrize(("fmt", "mime"), [("mp4", "video/mp4"), ("webm", "video/webm"), ("matroska", "video/x-matroska"),
                                           ("avi", "video/x-msvideo"), ("mov", "video/quicktime")])
def test_every_accepted_container_gives_a_frame_every_5_seconds_from_the_first(fmt, mime):
    info, sampled = frames(video_bytes(1, fmt=fmt, seconds=12))
    assert (info.mime, info.duration_s, info.width, info.height) == (mime, 12.0, 64, 48)
    assert [f.ts for f in sampled] == [0.0, 5.0, 10.0]
    first = Image.open(io.BytesIO(sampled[0].data))
    assert (first.format, first.size) == ("JPEG", (64, 48))
    # The frame is the picture the video showed at that second (lossy codecs: close, not equal).
    shown = np.asarray(first, dtype=np.float64)
    assert np.abs(shown - picture(1000, (64, 48))).mean() < 12
    assert np.abs(shown - picture(1005, (64, 48))).mean() > 20


def test_the_interval_is_settable_and_a_frame_cap_widens_it_to_cover_the_whole_video():
    _, every_2_5 = frames(video_bytes(2, seconds=12), frame_interval=2.5)
    assert [f.ts for f in every_2_5] == [0.0, 2.5, 5.0, 7.5, 10.0]
    info, capped = frames(video_bytes(2, seconds=12), frame_interval=1, max_frames=4)
    assert info.frame_interval_s == 3.0
    assert [f.ts for f in capped] == [0.0, 3.0, 6.0, 9.0]


def test_a_video_shorter_than_the_interval_still_gives_its_first_frame():
    _, sampled = frames(video_bytes(3, seconds=2))
    assert [f.ts for f in sampled] == [0.0]


def test_a_rotated_phone_video_gives_upright_frames():
    import av

    buf = io.BytesIO()
    left_white = np.zeros((48, 64, 3), np.uint8)
    left_white[:, :32] = 255
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=2)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)  # shown turned a quarter counter-clockwise, as players do
        for _ in range(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(left_white, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    _, sampled = frames(buf.getvalue())
    upright = np.asarray(Image.open(io.BytesIO(sampled[0].data)).convert("L"), dtype=np.float64)
    assert upright.shape == (64, 48)  # portrait
    assert upright[40:].mean() > 200 and upright[:24].mean() < 50  # the white left side is now at the bottom


def test_the_creation_time_dates_each_frame():
    info, _ = frames(video_bytes(4, fmt="mp4", creation_time="2024-05-01T12:00:00.000000Z"))
    assert info.created_at.isoformat() == "2024-05-01T12:00:00+00:00"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: b"", "empty file"),
        (lambda: os.urandom(5000), "not a video (not an MP4, MOV, WebM, Matroska or AVI file)"),
        (lambda: b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000), "not a video, or damaged (moov atom not found)"),
        # mp4 writes its index last: cut in half, the index is gone
        (lambda: (d := video_bytes(5, fmt="mp4"))[: len(d) // 2], "not a video, or damaged (moov atom not found)"),
        # WebM and Matroska decode up to the cut: the frames end long before the declared duration
        (lambda: (d := video_bytes(5, fmt="webm", seconds=20))[: len(d) // 2], "truncated video (its frames end at"),
        (lambda: (d := video_bytes(5, fmt="matroska", seconds=20))[: len(d) // 2], "truncated video"),
    ],
    ids=["empty", "random-bytes", "fake-mp4-header", "truncated-mp4", "truncated-webm", "truncated-mkv"],
)
def test_a_damaged_video_is_rejected_with_its_reason_in_one_line(make, reason):
    data = make()
    with pytest.raises(VideoRejected) as caught:
        frames(data)
    assert str(caught.value).startswith(reason)
    assert "\n" not in str(caught.value)


def test_an_audio_only_file_is_not_a_video():
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with pytest.raises(VideoRejected, match="no video stream"):
        frames(buf.getvalue())


def test_uploads_are_told_videos_by_their_bytes_or_their_name():
    assert sniff(video_bytes(6, fmt="mov")).name == "mov"
    assert sniff(video_bytes(6, fmt="webm")).name == "webm"
    assert is_video(video_bytes(6, fmt="avi"), "clip.bin")
    assert is_video(b"junk", "clip.MP4")  # then rejected as a video, with a video's reason
    assert not is_video(b"\xff\xd8\xff\xe0 a jpeg", "photo.jpg")


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("bytes=0-99", (0, 99)), ("bytes=100-", (100, 999)), ("bytes=-10", (990, 999)),
     ("bytes=900-5000", (900, 999)), ("bytes=-5000", (0, 999)), ("items=0-5", None), ("bytes=0-1, 5-6", None)],
)
def test_a_range_header_is_read_as_browsers_send_it(header, expected):
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-2", "bytes=abc", "bytes=-0", "bytes=-", "bytes=1.5-2"])
def test_an_unsatisfiable_or_malformed_range_is_a_416_saying_the_size(header):
    with pytest.raises(RangeNotSatisfiable) as caught:
        byte_range(header, 1000)
    assert caught.value.status_code == 416
    assert caught.value.headers["Content-Range"] == "bytes */1000"


def test_times_in_a_video_read_as_people_write_them():
    assert [clock(s) for s in (0, 5.0, 65.9, 754, 3723)] == ["0:00", "0:05", "1:05", "12:34", "1:02:03"]
