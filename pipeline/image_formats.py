"""The encoded image formats the pipeline accepts, and their sizes read from headers.

`tf.io.decode_image`, which training, evaluation and the serving signature all
use, decodes exactly these five (TensorFlow 2.21); ingest keeps only them. The
size comes from the header, before anything is decoded, so that a small file
that would decode to gigabytes can be turned away first.
"""

import struct

import tensorflow as tf

FORMATS = ("jpeg", "png", "gif", "bmp", "webp")
# For messages and help texts.
FORMATS_TEXT = "JPEG, PNG, GIF, BMP or WebP"


def detect(data):
    """The format of encoded image bytes, from their magic bytes, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    return None


def _webp_size(data):
    chunk = data[12:16]
    if chunk == b"VP8 ":
        # A lossy key frame: 3-byte tag, start code 9d 01 2a, then 14-bit sizes.
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("no VP8 start code")
        width, height = struct.unpack("<HH", data[26:30])
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L":
        # Signature 0x2f, then width - 1 and height - 1 in 14 bits each.
        if data[20] != 0x2F:
            raise ValueError("no VP8L signature")
        bits = int.from_bytes(data[21:25], "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":
        # The canvas: width - 1 and height - 1 in 24 bits each.
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return height, width
    raise ValueError(f"unknown WebP chunk {chunk!r}")


def header_size(data, image_format):
    """(height, width) from the header of `image_format` bytes, without decoding.

    Raises ValueError when the header is missing or malformed.
    """
    try:
        if image_format == "jpeg":
            height, width, _ = tf.image.extract_jpeg_shape(data).numpy()
            return int(height), int(width)
        if image_format == "png":
            width, height = struct.unpack(">II", data[16:24])
            return height, width
        if image_format == "gif":
            width, height = struct.unpack("<HH", data[6:10])
            return height, width
        if image_format == "bmp":
            (header,) = struct.unpack("<I", data[14:18])
            if header == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes.
                width, height = struct.unpack("<HH", data[18:22])
            else:  # A negative height means the rows are stored top-down.
                width, height = struct.unpack("<ii", data[18:26])
            return abs(height), abs(width)
        if image_format == "webp":
            return _webp_size(data)
    except (struct.error, IndexError, tf.errors.OpError) as error:
        raise ValueError(f"truncated or malformed {image_format} header") from error
    raise ValueError(f"not one of {FORMATS_TEXT}")
