"""The training stage: the model, its optimizer and precision, and one custom
loop for every `tf.distribute` strategy.

    models        the AlexNet a `ModelConfig` describes
    optimizers    SGD with momentum (one kernel) or Adam, and the schedules
    precision     the Keras policy of a run; the float32 copy exports use
    distribute    the strategy chosen by name
    train_steps   the replicated train and evaluation steps (+ winograd)
    loop          the epoch loop: checkpoints, resume, history, TensorBoard
    warm_start    --init-from and --freeze
"""
