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
# The largest file read as an image: a 50-megapixel image is at most 200 MB
# uncompressed (BMP at 4 bytes a pixel); a video in a photo folder is larger.
MAX_FILE_BYTES = 256 * 2**20


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


# Bytes of the header `header_sizes_op` reads: enough for every format but JPEG,
# whose size sits after its variable-length segments.
_HEADER_BYTES = 32
# JPEG segments walked before giving up on finding the frame header.
_MAX_JPEG_SEGMENTS = 64
# Start-of-frame markers (0xC0-0xCF but DHT 0xC4, JPG 0xC8 and DAC 0xCC).
_SOF_MARKERS = tuple(marker for marker in range(0xC0, 0xD0) if marker not in (0xC4, 0xC8, 0xCC))


def _bytes_at(image_bytes, start, count):
    """int64 [..., count]: bytes [start, start + count) of each string, zero past its end."""
    padded = tf.strings.join([image_bytes, tf.constant(b"\0" * count)])
    raw = tf.io.decode_raw(tf.strings.substr(padded, start, count), tf.uint8)
    return tf.cast(raw, tf.int64)


def _unsigned(head, start, count, big_endian=False):
    """The unsigned integers in bytes [start, start + count) of int64 `head` [..., n]."""
    order = range(start, start + count) if big_endian else reversed(range(start, start + count))
    value = tf.zeros_like(head[..., 0])
    for index in order:
        value = value * 256 + head[..., index]
    return value


def _matches(head, start, expected):
    return tf.reduce_all(
        tf.equal(head[..., start:start + len(expected)], tf.constant(list(expected), tf.int64)),
        axis=-1,
    )


def _jpeg_size(image_bytes):
    """(height, width) of one JPEG from its frame header, found by walking the
    segments from the start (an embedded thumbnail's frame header lies inside
    a segment and is skipped); (-1, -1) if there is none where it should be."""
    length = tf.cast(tf.strings.length(image_bytes), tf.int64)
    missing = tf.constant(-1, tf.int64)

    def step(position, height, width, done):
        # Read where the string still has bytes (substr raises past its end).
        segment = _bytes_at(image_bytes, tf.minimum(position, length), 9)
        segment = tf.ensure_shape(segment, [9])
        marker = segment[1]
        is_frame = tf.reduce_any(tf.equal(marker, _SOF_MARKERS))
        broken = tf.not_equal(segment[0], 0xFF) | (position + 9 > length)
        standalone = tf.equal(marker, 0xFF) | tf.equal(marker, 0x01) | (
            (marker >= 0xD0) & (marker <= 0xD8))
        advance = tf.where(tf.equal(marker, 0xFF), tf.constant(1, tf.int64), tf.where(
            standalone, tf.constant(2, tf.int64), 2 + segment[2] * 256 + segment[3]))
        found = is_frame & ~broken
        return (position + advance,
                tf.where(found, segment[5] * 256 + segment[6], height),
                tf.where(found, segment[7] * 256 + segment[8], width),
                found | broken | tf.equal(marker, 0xDA))  # start of scan: no frame

    start = (tf.constant(2, tf.int64), missing, missing,
             ~_matches(_bytes_at(image_bytes, 0, 3), 0, b"\xff\xd8\xff"))
    _, height, width, _ = tf.while_loop(
        lambda position, height, width, done: ~done, step, start,
        maximum_iterations=_MAX_JPEG_SEGMENTS,
    )
    return tf.stack([height, width])


def _format_index(head):
    """1 + the index in `FORMATS` each of `head` [n, bytes] starts as, 0 for none."""
    return tf.argmax(tf.stack([
        tf.zeros_like(head[:, 0], tf.bool),
        _matches(head, 0, b"\xff\xd8\xff"),
        _matches(head, 0, b"\x89PNG\r\n\x1a\n"),
        _matches(head, 0, b"GIF87a") | _matches(head, 0, b"GIF89a"),
        _matches(head, 0, b"BM"),
        _matches(head, 0, b"RIFF") & _matches(head, 8, b"WEBP"),
    ], axis=1), axis=1, output_type=tf.int32)


def header_sizes_op(image_bytes):
    """`header_size` as TensorFlow ops over a batch, for graphs such as the
    serving signature: for string [n] encoded images, bool [n] whether each is
    in one of `FORMATS`, and int64 [n] heights and widths, -1 where the header
    is cut short or malformed. No op raises, whatever the bytes.
    """
    image_bytes = tf.reshape(image_bytes, [-1])
    length = tf.cast(tf.strings.length(image_bytes), tf.int64)
    # Reshaped, not just shape-checked: no images decode to [0, 0].
    head = tf.reshape(_bytes_at(image_bytes, 0, _HEADER_BYTES), [-1, _HEADER_BYTES])
    kind = _format_index(head)
    jpeg = tf.map_fn(_jpeg_size, image_bytes, fn_output_signature=tf.int64)

    bmp_core = tf.equal(_unsigned(head, 14, 4), 12)

    def bmp_signed(start):  # A negative height means the rows are stored top-down.
        value = _unsigned(head, start, 4)
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    lossy = _matches(head, 12, b"VP8 ") & _matches(head, 23, b"\x9d\x01\x2a")
    lossless = _matches(head, 12, b"VP8L") & tf.equal(head[:, 20], 0x2F)
    extended = _matches(head, 12, b"VP8X")
    bits = _unsigned(head, 21, 4)
    # Per format in FORMATS order: (height, width, bytes the header needs).
    sizes = [
        (jpeg[:, 0], jpeg[:, 1], 0),
        (_unsigned(head, 20, 4, True), _unsigned(head, 16, 4, True), 24),
        (_unsigned(head, 8, 2), _unsigned(head, 6, 2), 10),
        (tf.where(bmp_core, _unsigned(head, 20, 2), bmp_signed(22)),
         tf.where(bmp_core, _unsigned(head, 18, 2), bmp_signed(18)), 26),
        (tf.where(lossy, _unsigned(head, 28, 2) % 16384,
                  tf.where(lossless, (bits // 16384) % 16384 + 1, _unsigned(head, 27, 3) + 1)),
         tf.where(lossy, _unsigned(head, 26, 2) % 16384,
                  tf.where(lossless, bits % 16384 + 1, _unsigned(head, 24, 3) + 1)), 30),
    ]
    height = width = -tf.ones_like(length)
    for index, (format_height, format_width, needed) in enumerate(sizes, start=1):
        valid = tf.equal(kind, index) & (length >= needed)
        if index == len(FORMATS):
            valid &= lossy | lossless | extended
        height = tf.where(valid, format_height, height)
        width = tf.where(valid, format_width, width)
    return kind > 0, height, width
