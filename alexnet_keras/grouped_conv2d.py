"""A grouped convolution computed group by group, as the paper's two GPUs did."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="alexnet_keras")
class GroupedConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D(groups=g)` that convolves each group on its own.

    Each group's slice of the input channels meets its slice of the kernel's
    output channels, and the outputs are concatenated: the same weights (a
    kernel of `[height, width, channels / g, filters]`), the same values and
    the same gradients as `Conv2D(groups=g)`, and exactly how conv2, conv4
    and conv5 of the paper's network ran on its two GPUs.

    Keras' TensorFlow backend computes a grouped convolution through a
    nested XLA function instead (TensorFlow's CPU kernel without oneDNN has
    none). On a 2-core CPU that is 9x slower than this layer (conv2 of the
    paper at batch 32, forward and backward: 1,112 ms against 125 ms), and
    tf2onnx cannot convert the nested function. Group by group, the layer is
    plain convolutions on every backend and in LiteRT, ONNX and TF Serving.
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1:
            return super().convolution_op(inputs, kernel)
        axis = -1 if self.data_format == "channels_last" else 1
        outputs = [
            super(GroupedConv2D, self).convolution_op(group_inputs, group_kernel)
            for group_inputs, group_kernel in zip(
                ops.split(inputs, self.groups, axis=axis),
                ops.split(kernel, self.groups, axis=-1),
            )
        ]
        return ops.concatenate(outputs, axis=axis)
