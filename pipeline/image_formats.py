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
# A 1x5000 strip is no photograph, and resizing it to a square makes noise:
# ingest skips, and the serving signature refuses, images with a long side
# more than this many times the short one.
MAX_ASPECT_RATIO = 20


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


# Bytes of the header `header_size_op` reads: enough for every format but JPEG,
# whose size sits after its variable-length segments.
_HEADER_BYTES = 32


def _unsigned(head, start, count, big_endian=False):
    """The unsigned integer in bytes [start, start + count) of int64 `head`."""
    value = tf.constant(0, tf.int64)
    order = range(start, start + count) if big_endian else reversed(range(start, start + count))
    for index in order:
        value = value * 256 + head[index]
    return value


def _matches(head, start, expected):
    return tf.reduce_all(
        tf.equal(head[start:start + len(expected)], tf.constant(list(expected), tf.int64))
    )


def _head(image_bytes):
    """The first `_HEADER_BYTES` bytes as int64, zero-padded when shorter."""
    padded = tf.strings.join([image_bytes, tf.constant(b"\0" * _HEADER_BYTES)])
    head = tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8)
    return tf.ensure_shape(tf.cast(head, tf.int64), [_HEADER_BYTES])


def _format_index(head):
    """1 + the index in `FORMATS` of the format `head` starts as, 0 for none."""
    return tf.argmax(output_type=tf.int32, input=tf.stack([
        False,
        _matches(head, 0, b"\xff\xd8\xff"),
        _matches(head, 0, b"\x89PNG\r\n\x1a\n"),
        _matches(head, 0, b"GIF87a") | _matches(head, 0, b"GIF89a"),
        _matches(head, 0, b"BM"),
        _matches(head, 0, b"RIFF") & _matches(head, 8, b"WEBP"),
    ]))


def is_supported_op(image_bytes):
    """Whether encoded bytes start as one of `FORMATS` does (TensorFlow ops)."""
    return _format_index(_head(image_bytes)) > 0


def header_size_op(image_bytes):
    """`header_size` as TensorFlow ops, for graphs such as the serving signature:
    int64 (height, width) of one encoded image, (-1, -1) if it is in none of
    `FORMATS` or its header is cut short or malformed. A JPEG's size comes from
    `tf.image.extract_jpeg_shape`, which raises on a malformed JPEG instead.
    """
    length = tf.strings.length(image_bytes)
    head = _head(image_bytes)
    invalid = (tf.constant(-1, tf.int64), tf.constant(-1, tf.int64))

    def sized(height, width, needed):
        return tf.cond(length >= needed, lambda: (height, width), lambda: invalid)

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes, output_type=tf.int64)
        return shape[0], shape[1]

    def png():
        return sized(_unsigned(head, 20, 4, True), _unsigned(head, 16, 4, True), 24)

    def gif():
        return sized(_unsigned(head, 8, 2), _unsigned(head, 6, 2), 10)

    def bmp():
        core = tf.equal(_unsigned(head, 14, 4), 12)

        def signed(start):  # A negative height means the rows are stored top-down.
            value = _unsigned(head, start, 4)
            return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

        height = tf.where(core, _unsigned(head, 20, 2), signed(22))
        width = tf.where(core, _unsigned(head, 18, 2), signed(18))
        return sized(height, width, 26)

    def webp():
        lossy = _matches(head, 12, b"VP8 ") & _matches(head, 23, b"\x9d\x01\x2a")
        lossless = _matches(head, 12, b"VP8L") & tf.equal(head[20], 0x2F)
        extended = _matches(head, 12, b"VP8X")
        bits = _unsigned(head, 21, 4)
        height = tf.where(lossy, _unsigned(head, 28, 2) % 16384,
                          tf.where(lossless, (bits // 16384) % 16384 + 1,
                                   _unsigned(head, 27, 3) + 1))
        width = tf.where(lossy, _unsigned(head, 26, 2) % 16384,
                         tf.where(lossless, bits % 16384 + 1, _unsigned(head, 24, 3) + 1))
        return tf.cond(lossy | lossless | extended,
                       lambda: sized(height, width, 30), lambda: invalid)

    return tf.switch_case(_format_index(head), [lambda: invalid, jpeg, png, gif, bmp, webp])
