"""An example `model.builder` (experiments/builder.yaml): a Keras model of one's own.

The suite calls `build(input_shape, num_classes, seed)` with the data's shape (for MNIST
(28, 28)) and expects logits out; it applies the study's `weight_decay` and `l1` to every
kernel of the model itself, and trains it in its compiled loop like its own networks.
"""

import keras


def build(input_shape: tuple[int, ...], num_classes: int, seed: int) -> keras.Model:
    """Two small convolutions with max pooling, then a dense layer: 12,810 weights on 28x28 images."""
    init = keras.initializers.HeNormal(seed=seed)
    channels = (*input_shape, 1) if len(input_shape) == 2 else input_shape
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Reshape(channels),
            keras.layers.Conv2D(16, 3, activation="relu", kernel_initializer=init),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, activation="relu", kernel_initializer=init),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, kernel_initializer=init),
        ],
        name="small_cnn",
    )
