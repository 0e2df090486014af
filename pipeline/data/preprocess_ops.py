"""Image preprocessing ops, shared by training, evaluation and serving.

Pure TensorFlow functions of tensors: they build no `tf.data` pipeline and
read no files, so the serving signature uses the very ops the input pipeline
(`pipeline.data.input_pipeline`) uses. Training follows the paper: a random crop with
scale jitter, a horizontal flip and, optionally, the paper's PCA colour noise.
Evaluation and serving use `preprocess_for_eval`: a resize and the central
crop the model's `ImageSpec` names (`crop_fraction`; `ImageSpec.preprocess` is
the same in `keras.ops`, for any backend), and `ten_crops` the paper's
ten-patch test. Both end in the model's own
`ImageSpec.normalize`, so training and serving see pixels the same way.
"""

import tensorflow as tf

# Training crops cover 70-100% of the image's area, about 78% on average (crops
# that do not fit are redrawn, which favours smaller ones): the paper's 227 crops
# of 256 images take 79%, and the evaluation crop takes 77%.
CROP_AREA_RANGE = (0.7, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
# The paper's PCA colour noise uses the eigen-decomposition of ImageNet's RGB
# pixel covariance (for pixels in [0, 1]; the values of fb.resnet.torch):
# columns are eigenvectors, and each image gets
# eigenvectors @ (alpha * eigenvalues) added to every pixel, alpha ~ N(0, 0.1).
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
PCA_NOISE_STDDEV = 0.1


def to_channels(image, channels):
    """uint8 [height, width, any channels] to `channels` (1 or 3): grey becomes
    RGB and colour grey (dropping any alpha), the same way on every path."""
    # Sliced and broadcast, not branched (no tf.cond): inside tf.data, as in the
    # serving signature, every branch is a function instantiated per request.
    # Nor gathered: a gather over the channel axis cost twice what decoding
    # the JPEG did (1.5 against 0.8 ms for crops of 300-500 pixel photos).
    shape = tf.shape(image)
    rgb = image[..., : tf.where(shape[-1] >= 3, 3, 1)]
    rgb = tf.broadcast_to(rgb, tf.concat([shape[:-1], [3]], axis=0))
    if channels == 1:
        # Grey goes through the same conversion and comes back as it was: the
        # weights sum to 0.9999 and the conversion back to uint8 scales by
        # 255.5/255 before it truncates.
        return tf.ensure_shape(tf.image.rgb_to_grayscale(rgb), [None, None, 1])
    return tf.ensure_shape(rgb, [None, None, 3])


def decode_image(image_bytes, channels):
    """Decodes an image of `pipeline.image_formats` (a GIF's first frame) to uint8
    [height, width, channels].

    Grey images become RGB and colour ones grey (dropping any alpha) as
    `channels` (1 or 3) asks. Corrupt bytes raise `tf.errors.InvalidArgumentError`.
    """
    # Decoded in the file's own channels and converted after: decode_image cannot
    # make BMP or GIF grey, and one conversion keeps every path alike.
    return to_channels(tf.io.decode_image(image_bytes, expand_animations=False), channels)


def preprocess_for_eval(images, image_spec):
    """Resizes, central-crops and normalises images for the model, deterministically.

    Args:
        images: uint8 or float pixels in 0-255, `[H, W, C]` or `[N, H, W, C]`.
        image_spec: the model's `alexnet_keras.ImageSpec`.

    Returns:
        float32 `[..., height, width, C]`, normalised as `image_spec` says: the
        central `image_spec.crop_fraction` of each side of the image scaled (aspect
        ratio kept) to cover the model's input, bilinearly sampled straight
        from the input pixels. No tensor larger than the output is made,
        whatever the input's size or shape: a 1x20000 strip is not first
        scaled to 259x5 million pixels, nor a large image cast to float whole.
    """
    return _crops(images, image_spec, [CENTRE])


# Where the paper's five patches sit in the evaluation square, as fractions of
# the room left around a crop (rows, columns): the four corners and the centre.
CENTRE = (0.5, 0.5)
FIVE_CROPS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0), CENTRE)
TEN_CROPS = 2 * len(FIVE_CROPS)


def ten_crops(images, image_spec):
    """The paper's test patches: "the four corner patches and the center patch
    as well as their horizontal reflections".

    The image is scaled as for `preprocess_for_eval` (the model's input is
    `crop_fraction` of the short side: the paper's 224 of 256), and the
    patches are taken from its central square, as the paper took them from the
    256x256 centre of each image; the centre patch is `preprocess_for_eval`'s.

    Args:
        images: uint8 or float pixels in 0-255, `[H, W, C]` or `[N, H, W, C]`.
        image_spec: the model's `alexnet_keras.ImageSpec`.

    Returns:
        float32 `[..., 10, height, width, C]`, normalised: the five patches in
        `FIVE_CROPS` order, then their mirror images in the same order.
    """
    crops = _crops(images, image_spec, FIVE_CROPS)
    return tf.concat([crops, tf.reverse(crops, axis=[-2])], axis=-4)


def ten_crop_average(probabilities_of, patches, image_spec):
    """The paper's answer for each image: `probabilities_of` (a batch of model
    inputs -> a row each) on all of `ten_crops`' patches `[N, 10, ...]` at once,
    averaged over each image's ten: `[N, classes]`."""
    flat = tf.reshape(patches, [-1, *image_spec.shape])
    probabilities = probabilities_of(flat)
    return tf.reduce_mean(
        tf.reshape(probabilities, [tf.shape(patches)[0], TEN_CROPS, -1]), axis=1)


def _crops(images, image_spec, anchors):
    """Normalised crops at the model's input size: `[..., height, width, C]` for
    one anchor, `[..., len(anchors), height, width, C]` for several."""
    images = tf.convert_to_tensor(images)
    batched = images.shape.rank == 4
    if not batched:
        images = images[tf.newaxis]
    height, width = image_spec.image_size
    size = tf.cast(tf.shape(images)[1:3], tf.float32)
    # Input pixels per output pixel, the same on both axes.
    step = tf.minimum(size[0] / height, size[1] / width) * image_spec.crop_fraction
    # Enlarging samples up to half a pixel beyond the edges, where resize
    # repeats the edge pixels: a one-pixel frame of them does the same (the
    # image is then smaller than the model's input, so the copy is cheap).
    frame = tf.cast(step < 1, tf.int32)
    images = tf.pad(images, [[0, 0], [frame, frame], [frame, frame], [0, 0]], "SYMMETRIC")
    frame = tf.cast(frame, tf.float32)
    boxes = []
    for vertical, horizontal in anchors:
        box = []
        for extent, output, anchor in ((size[0], height, vertical), (size[1], width, horizontal)):
            # The crop lies in the central region of the model's shape that
            # `crop_fraction` leaves around it, `anchor` of the way across:
            # half-pixel centres, as tf.image.resize samples, in the normalised
            # corner-aligned coordinates that crop_and_resize takes.
            crop = output * step
            region = crop / image_spec.crop_fraction
            first = frame + (extent - region) / 2 + (region - crop) * anchor + step / 2 - 0.5
            last = first + step * (output - 1)
            scale = tf.maximum(extent + 2 * frame - 1, 1.0)
            box.append((first / scale, last / scale))
        (top, bottom), (left, right) = box
        boxes.append(tf.stack([top, left, bottom, right]))
    count = tf.shape(images)[0]
    # Image-major: every anchor of the first image, then of the next.
    crops = tf.image.crop_and_resize(
        images, tf.tile(tf.stack(boxes), [count, 1]),
        tf.repeat(tf.range(count), len(anchors)), [height, width],
    )
    crops = image_spec.normalize(crops)
    if len(anchors) > 1:
        crops = tf.reshape(crops, [count, len(anchors), height, width, crops.shape[-1]])
    return crops if batched else crops[0]


def crop_window(image_shape, seed):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
        area_range=CROP_AREA_RANGE,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size


def random_crop(image, seed):
    begin, size = crop_window(tf.shape(image), seed)
    return tf.slice(image, begin, size)


def decode_random_crop(image_bytes, channels, seed):
    """A random crop of an encoded image; JPEGs decode only the crop (fused op)."""

    def crop_jpeg():
        begin, size = crop_window(tf.image.extract_jpeg_shape(image_bytes), seed)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        # The file's own channels, then the conversion evaluation and serving use:
        # libjpeg's own grey conversion differs from rgb_to_grayscale.
        return to_channels(tf.image.decode_and_crop_jpeg(image_bytes, window), channels)

    def crop_other():
        return random_crop(decode_image(image_bytes, channels), seed)

    image = tf.cond(tf.io.is_jpeg(image_bytes), crop_jpeg, crop_other)
    return tf.ensure_shape(image, [None, None, channels])


def pca_noise(image, seed):
    """The paper's colour augmentation on a float 0-255 RGB image."""
    alpha = tf.random.stateless_normal([3], seed, stddev=PCA_NOISE_STDDEV)
    shift = tf.linalg.matvec(
        tf.constant(IMAGENET_EIGENVECTORS), alpha * tf.constant(IMAGENET_EIGENVALUES)
    )
    return image + 255.0 * shift
