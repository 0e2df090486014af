"""The training and evaluation steps: one `tf.function` each, for every strategy.

Keras 3's `model.fit` fails under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585), so training runs its own step through `strategy.run`
inside a `tf.function`: the same code on one CPU, several GPUs or several
machines. `pipeline.training.loop` runs them in its epoch loop; the tuner and the
benchmarks run them too.
"""

import contextlib

import keras
import tensorflow as tf

from pipeline.training import winograd as winograd_lib
from pipeline.errors import PipelineError


def make_train_step(model, optimizer, strategy, global_batch_size, weight_decay=0.0,
                    jit_compile=False, winograd=True):
    """A `tf.function` that trains one global batch from a distributed iterator.

    Returns the batch's summed cross-entropy, correct predictions and example
    count, reduced over all replicas. The loss each replica differentiates is
    its share of the global mean (`compute_average_loss` divides by the global
    batch), and the optimizer sums the replicas' gradients, so a step over N
    replicas equals one step over the whole batch on one device.

    Weight decay is the paper's: an L2 term on the kernels added to the loss,
    so that it passes through momentum (`w -= lr * (grad + weight_decay * w)`).

    `winograd` (on by default, as in `TrainConfig`) computes the float32 3x3
    convolutions by Winograd F(4x4, 3x3) where `pipeline.training.winograd` finds it
    pays; under `jit_compile` XLA compiles every convolution its own way.
    """
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None
    )
    # Frozen layers' kernels are constants: they would only add to the loss.
    kernels = [layer.kernel for layer in model.layers
               if hasattr(layer, "kernel") and layer.trainable]
    variables = model.trainable_variables

    def gradients(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = cross_entropy(labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if weight_decay:
                penalty = weight_decay * tf.add_n([tf.nn.l2_loss(kernel) for kernel in kernels])
                loss += tf.nn.scale_regularization_loss(penalty)
            scaled_loss = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, variables)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32)
        )
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return grads, tf.reduce_sum(per_example), correct, count

    if jit_compile:
        # XLA compiles the forward and backward pass; the optimizer update stays
        # outside because it synchronises replicas through `merge_call`.
        gradients = tf.function(gradients, jit_compile=True)

    def replica_step(images, labels):
        grads, loss_sum, correct, count = gradients(images, tf.cast(labels, tf.int32))
        optimizer.apply_gradients(zip(grads, variables))
        return tf.stack([loss_sum, correct, count])

    def convolutions():
        if winograd and not jit_compile:
            return winograd_lib.convolutions(model)
        return contextlib.nullcontext()

    @tf.function
    def train_step(iterator):
        # Entered while this function traces, before the replicas' threads
        # trace `replica_step`, and left after them.
        with convolutions():
            images, labels = next(iterator)
            per_replica = strategy.run(replica_step, args=(images, labels))
        # One reduction (one collective across workers) for the three sums.
        return tf.unstack(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))

    return train_step


def make_eval_step(model):
    """A `tf.function` giving a batch's summed cross-entropy and top-1 hits.

    Evaluation runs on the local device in cross-replica context rather than
    through `strategy.run`: under multi-worker training the shards' batch
    counts can differ by one, and a collective waiting for a batch that one
    worker does not have would hang. Every worker evaluates the whole split.
    """

    # Any batch size, one trace: the last batch of a split is smaller, and a
    # second trace per model adds up when a process trains many (tuning
    # trials, benchmarks) and makes TensorFlow warn of retracing.
    @tf.function(input_signature=[
        tf.TensorSpec([None, *model.image_spec.shape], tf.float32),
        tf.TensorSpec([None], tf.int32),
    ])
    def eval_step(images, labels):
        logits = model(images, training=False)
        per_example = keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True
        )
        top1 = tf.reduce_sum(tf.cast(tf.nn.in_top_k(labels, logits, 1), tf.float32))
        return tf.reduce_sum(per_example), top1

    return eval_step


def evaluate_dataset(eval_step, dataset):
    """Runs `eval_step` over a batched dataset: mean loss and accuracy. The sums
    stay tensors until the end, so batches are not held up by the host."""
    loss_sum = hits = 0.0
    count = 0
    for images, labels in dataset:
        batch_loss, batch_hits = eval_step(images, labels)
        loss_sum += batch_loss
        hits += batch_hits
        count += int(labels.shape[0])
    if not count:
        raise PipelineError("the evaluation split is empty; ingest a dataset with more examples")
    return {"loss": float(loss_sum) / count, "accuracy": float(hits) / count}
