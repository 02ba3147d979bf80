"""Decoding untrusted bytes: every odd mode becomes the RGB a person would see, and
every hostile input becomes one short ImageRejected reason, never a traceback."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib
from datetime import datetime

import numpy as np
import pytest
from PIL import ExifTags, Image

from pgclip.core.errors import InvalidInput
from pgclip.workers.decode import MAX_IMAGE_PIXELS, ImageRejected, decode, make_thumbnail, probe

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encoded(im: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def close(actual, expected, tolerance=8) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header (with a correct CRC) claims width x height pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def odd_images() -> dict[str, bytes]:
    """One file per awkward mode, each with content whose RGB rendering is known."""
    palette = Image.new("P", (24, 16), 1)
    palette.putpalette([0, 0, 0] + list(RED) + [0, 0, 0] * 254)
    palette.paste(0, (0, 0, 12, 16))  # left half: index 0, declared transparent
    la = Image.new("LA", (24, 16), (90, 255))
    la.paste((0, 0), (0, 0, 12, 16))
    rgba = Image.new("RGBA", (24, 16), (*BLUE, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 12, 16))
    grey16 = Image.fromarray(np.tile(np.linspace(0, 65535, 24).astype(np.uint16), (16, 1)))
    one_bit = Image.new("1", (24, 16), 0)
    one_bit.paste(1, (12, 0, 24, 16))
    frames = [Image.new("RGB", (24, 16), c) for c in (RED, GREEN, BLUE)]
    rotated = Image.new("RGB", (40, 20), RED)
    rotated.paste(BLUE, (20, 0, 40, 20))
    orientation = Image.Exif()
    orientation[ExifTags.Base.Orientation] = 6  # stored sideways: display rotated 90 degrees clockwise
    return {
        "cmyk_jpeg": encoded(Image.new("CMYK", (24, 16), (0, 255, 255, 0)), "JPEG", quality=95),
        "palette_png": encoded(palette, "PNG", transparency=0),
        "la_png": encoded(la, "PNG"),
        "rgba_png": encoded(rgba, "PNG"),
        "grey16_png": encoded(grey16, "PNG"),
        "animated_gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        "rotated_jpeg": encoded(rotated, "JPEG", exif=orientation, quality=95),
        "one_bit_png": encoded(one_bit, "PNG"),
    }


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return odd_images()


@pytest.mark.parametrize("name", list(odd_images()))
def test_every_odd_mode_decodes_to_rgb(images, name):
    im = decode(images[name])
    assert im.mode == "RGB"
    probe(images[name])  # and the probe accepts what decode accepts


def test_cmyk_jpeg_keeps_its_colour(images):
    assert close(decode(images["cmyk_jpeg"]).getpixel((12, 8)), RED, 12)


def test_palette_transparency_becomes_white(images):
    im = decode(images["palette_png"])
    assert im.getpixel((2, 8)) == WHITE
    assert im.getpixel((20, 8)) == RED


def test_grey_with_alpha_composited_on_white(images):
    im = decode(images["la_png"])
    assert im.getpixel((2, 8)) == WHITE
    assert im.getpixel((20, 8)) == (90, 90, 90)


def test_fully_transparent_rgba_pixel_becomes_white_not_black(images):
    im = decode(images["rgba_png"])
    assert im.getpixel((2, 8)) == WHITE
    assert im.getpixel((20, 8)) == BLUE


def test_half_transparent_black_is_grey():
    im = decode(encoded(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG"))
    assert close(im.getpixel((0, 0)), (127, 127, 127), 1)


def test_16_bit_grey_is_scaled_not_clipped_to_white(images):
    row = [decode(images["grey16_png"]).getpixel((x, 0))[0] for x in range(24)]
    assert row[0] == 0 and row[-1] == 255
    assert 100 < row[12] < 155  # mid-grey stays mid-grey (clipping would give 255)
    assert row == sorted(row)


def test_animated_gif_gives_first_frame(images):
    assert close(decode(images["animated_gif"]).getpixel((5, 5)), RED)
    assert probe(images["animated_gif"]).frames == 3


def test_exif_orientation_is_applied(images):
    im = decode(images["rotated_jpeg"])
    assert im.size == (20, 40)  # stored 40x20, shown upright as 20x40
    assert close(im.getpixel((10, 5)), RED, 12) and close(im.getpixel((10, 35)), BLUE, 12)
    info = probe(images["rotated_jpeg"])
    assert (info.width, info.height, info.orientation) == (20, 40, 6)


def test_one_bit_image_is_black_and_white(images):
    im = decode(images["one_bit_png"])
    assert im.getpixel((2, 2)) == (0, 0, 0) and im.getpixel((20, 2)) == WHITE


def test_empty_file_is_rejected():
    with pytest.raises(ImageRejected, match="^empty file$"):
        decode(b"")


def test_text_renamed_to_jpg_is_rejected(tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is not a photo\n")
    for read in (decode, probe):
        with pytest.raises(ImageRejected, match=r"^not an image \(cannot identify image file\)$"):
            read(fake.read_bytes())


def test_truncated_jpeg_is_rejected_by_decode_and_probe():
    pixels = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(pixels), "JPEG")
    for read in (decode, probe):
        with pytest.raises(ImageRejected, match="^truncated image$"):
            read(data[: len(data) // 2])


def test_decompression_bomb_header_is_rejected_before_decoding():
    data = png_claiming(30000, 30000)
    assert len(data) < 200
    for read in (decode, probe):
        with pytest.raises(ImageRejected, match="^image too large: .*900000000 pixels exceeds the limit of 89478485$"):
            read(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_just_over_the_limit_names_its_size():
    assert MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    with pytest.raises(ImageRejected) as caught:
        probe(png_claiming(10000, 10000))
    assert str(caught.value) == "image too large: 10000x10000 = 100000000 pixels exceeds the limit of 89478485"


def test_formats_outside_the_accepted_list_are_rejected():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageRejected, match="^not an image"):
        decode(eps)


def test_rejections_are_invalid_input_for_the_api():
    with pytest.raises(InvalidInput):
        decode(b"\x00")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_corrupted_bytes_never_escape_as_other_exceptions(fmt):
    pixels = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    original = bytearray(encoded(Image.fromarray(pixels), fmt))
    rng = random.Random(fmt)
    for _ in range(40):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randint(1, len(data))] if rng.random() < 0.3 else data
        for read in (decode, probe):
            try:
                read(bytes(data))
            except ImageRejected as exc:
                assert "\n" not in str(exc) and len(str(exc)) < 200


def test_exif_fields_are_extracted():
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon\x00"
    exif[ExifTags.Base.Model] = "EOS 5D Mark IV"
    exif[ExifTags.Base.DateTime] = "2020:01:01 00:00:00"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2021:06:15 14:30:05"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "S"
    gps[ExifTags.GPS.GPSLatitude] = (33.0, 52.0, 7.68)
    gps[ExifTags.GPS.GPSLongitudeRef] = "W"
    gps[ExifTags.GPS.GPSLongitude] = (151.0, 12.0, 33.48)
    data = encoded(Image.new("RGB", (30, 20), GREEN), "JPEG", exif=exif)

    info = probe(data)

    assert info.taken_at == datetime(2021, 6, 15, 14, 30, 5)
    assert (info.camera_make, info.camera_model) == ("Canon", "EOS 5D Mark IV")
    assert info.gps_latitude == pytest.approx(-33.8688, abs=1e-6)
    assert info.gps_longitude == pytest.approx(-151.2093, abs=1e-6)
    assert (info.width, info.height, info.format, info.mime, info.frames) == (30, 20, "JPEG", "image/jpeg", 1)
    assert info.byte_size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()


def test_garbage_exif_is_ignored_and_datetime_falls_back():
    exif = Image.Exif()
    exif[ExifTags.Base.DateTime] = "2019:12:24 18:00:00"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "0000:00:00 00:00:00"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitude] = (1.0, 2.0)  # two parts instead of three
    gps[ExifTags.GPS.GPSLongitude] = (500.0, 0.0, 0.0)  # out of range
    exif[ExifTags.Base.Orientation] = 42

    info = probe(encoded(Image.new("RGB", (8, 8)), "JPEG", exif=exif))

    assert info.taken_at == datetime(2019, 12, 24, 18, 0, 0)
    assert info.gps_latitude is None and info.gps_longitude is None
    assert info.orientation is None and info.camera_make is None


@pytest.mark.parametrize("original", ["9999:12:31 23:59:59", "0001:01:01 00:00:00"])
def test_a_placeholder_date_at_either_end_of_the_calendar_is_no_date(original):
    """Such a time, stored, is one no client reads back (core.times): it falls back to DateTime."""
    exif = Image.Exif()
    exif[ExifTags.Base.DateTime] = "2019:12:24 18:00:00"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = original

    assert probe(encoded(Image.new("RGB", (8, 8)), "JPEG", exif=exif)).taken_at == datetime(2019, 12, 24, 18)


def test_image_without_exif_has_no_metadata():
    info = probe(encoded(Image.new("RGB", (8, 6)), "PNG"))
    assert (info.taken_at, info.camera_make, info.gps_latitude, info.orientation) == (None, None, None, None)
    assert (info.width, info.height, info.mime) == (8, 6, "image/png")


def test_thumbnail_is_webp_within_bounds_with_aspect_kept():
    made = make_thumbnail(Image.new("RGB", (1000, 500), RED))
    thumb = Image.open(io.BytesIO(made.data))
    assert thumb.format == "WEBP" and thumb.size == (made.width, made.height) == (256, 128)
    made = make_thumbnail(Image.new("RGB", (100, 300), RED), max_side=64)
    assert Image.open(io.BytesIO(made.data)).size == (made.width, made.height) == (21, 64)
    made = make_thumbnail(Image.new("RGB", (30, 20), RED))  # small images keep their size
    assert Image.open(io.BytesIO(made.data)).size == (made.width, made.height) == (30, 20)
