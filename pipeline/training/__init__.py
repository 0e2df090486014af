"""The training stage: the model, its optimizer and precision, and one custom
loop for every `tf.distribute` strategy.

    models        the AlexNet a `ModelConfig` describes
    optimizers    SGD with momentum (one kernel) or Adam, and the schedules
    precision     the Keras policy of a run; the float32 copy exports use
    distribute    the strategy chosen by name
    train_steps   the replicated train and evaluation steps (+ winograd)
    loop          the epoch loop: resume, divergence, TensorBoard
    callbacks     the run's own: plateau schedule, early stopping, history.csv,
                  the epoch-end checkpoint
    warm_start    --init-from and --freeze
"""
