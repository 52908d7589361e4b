"""The naive baseline `make bench` compares against: Keras `fit(validation_data=...)`.

Same work as the canonical run: the first 300 training images, 784-100x6-10 ReLU with He init,
SGD lr 0.01, batch 100, 200 epochs, the whole test set evaluated after every epoch, plus the
whole training subset in inference mode (the train metrics the suite logs). Run as its own
process so its time includes start-up, like `overfit run`.

Usage: python bench/naive_fit.py MNIST_NPZ|--bundled [EPOCHS] [--cnn]
(--bundled: the suite's offline subset, split as the suite splits it; --cnn: the textbook's
SimpleConvNet, conv 30 x 5x5, ReLU, 2x2 max pool, dense 100, ReLU, dense 10, instead of the MLP)
"""

import sys
import time

import keras
import numpy as np

start = time.perf_counter()
cnn = "--cnn" in sys.argv
args = [a for a in sys.argv[1:] if a != "--cnn"]
path = args[0]
epochs = int(args[1]) if len(args) > 1 else 200
if path == "--bundled":
    from suite.data import BUNDLED_TRAIN_POOL, bundled_path

    with np.load(bundled_path()) as d:
        x_all, y_all = d["x"], d["y"]
    x_train_all, y_train_all = x_all[:BUNDLED_TRAIN_POOL], y_all[:BUNDLED_TRAIN_POOL]
    x_test_all, y_test = x_all[BUNDLED_TRAIN_POOL:], y_all[BUNDLED_TRAIN_POOL:]
else:
    with np.load(path) as d:
        x_train_all, y_train_all = d["x_train"], d["y_train"]
        x_test_all, y_test = d["x_test"], d["y_test"]
x_train = x_train_all[:300].reshape(300, -1).astype("float32") / 255
y_train = y_train_all[:300]
x_test = x_test_all.reshape(len(x_test_all), -1).astype("float32") / 255

keras.utils.set_random_seed(0)
init = keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")
if cnn:
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Reshape((28, 28, 1)),
            keras.layers.Conv2D(30, 5, activation="relu", kernel_initializer=init),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(100, "relu", kernel_initializer=init),
            keras.layers.Dense(10, kernel_initializer=init),
        ]
    )
else:
    model = keras.Sequential(
        [keras.Input((784,))]
        + [keras.layers.Dense(100, "relu", kernel_initializer=init) for _ in range(6)]
        + [keras.layers.Dense(10, kernel_initializer=init)]
    )
model.compile(
    keras.optimizers.SGD(0.01),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)


class TrainEval(keras.callbacks.Callback):
    """Whole-training-subset metrics in inference mode, as the suite logs them."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.evaluate(x_train, y_train, batch_size=300, verbose=0)


history = model.fit(
    x_train,
    y_train,
    batch_size=100,
    epochs=epochs,
    validation_data=(x_test, y_test),
    callbacks=[TrainEval()],
    verbose=0,
)
print(
    f"naive fit{' (cnn)' if cnn else ''}: {epochs} epochs, final test accuracy {history.history['val_accuracy'][-1]:.4f}, "
    f"{time.perf_counter() - start:.1f} s in process"
)
