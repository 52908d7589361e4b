"""Model builders: `build_model(spec, seed) -> keras.Model`, a pure function of the spec.

Each hidden layer is Dense -> [BatchNorm] -> activation -> [Dropout], as in the textbook's code;
the output is a Dense layer of logits (softmax lives in the loss). Regularisation is attached to
the kernels, so `model.losses` holds exactly the textbook's penalty.

Owns: the network a `ModelSpec` describes (layers, activations, the textbook's classic dropout,
weight initialisers and their `init_scale`, `scale_parameters`, L1/L2 penalties), its size
(`trainable_count`, what a run logs as `n_params`), the checks of an initialisation
(`parameter_count`, `kernel_stds`, `expected_std`), activation histograms (`histogram`, a network's
`layer_histograms`, the textbook's probe, `activation_probe`, and a run's `activations_record`),
and a trained network saved to a Keras file for its run's record (`SavedNetwork`,
`save_network`). Must not: train or evaluate (`suite.train` owns the loop, `suite.optimizers`
the optimizer and the loss), read data, or reach MLflow: of the suite it imports `suite._tf`, the schema
(`suite.spec`) and `suite.builders` only.
"""

from __future__ import annotations

import suite._tf  # noqa: F401  (quiet TensorFlow start-up, before keras)

# isort: split

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras

from suite import builders
from suite.spec import (
    ModelSpec,
    RunConfig,
    StdInit,
    conv_input_shape,
    conv_output_sizes,
    describe_init,
)

if TYPE_CHECKING:
    import numpy as np

ACTIVATIONS = {
    "relu": keras.activations.relu,
    # 0.01 is the common leaky slope; Keras' own default (0.2) is much leakier.
    "leaky_relu": lambda x: keras.activations.leaky_relu(x, negative_slope=0.01),
    "elu": keras.activations.elu,
    "sigmoid": keras.activations.sigmoid,
    "tanh": keras.activations.tanh,
}


@keras.saving.register_keras_serializable(package="suite")
class ClassicDropout(keras.layers.Layer):
    """The textbook's (non-inverted) dropout.

    Training: keep a unit when uniform noise > rate, output x * mask with no rescaling.
    Inference: output x * (1 - rate). Keras' `Dropout` is the inverted form instead
    (x * mask / (1 - rate) in training, identity at inference): same expectation, but the
    training noise is scaled differently, which changes how fast a net learns.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs: Any, training: bool = False) -> Any:
        if training:
            noise = keras.random.uniform(keras.ops.shape(inputs), seed=self.seed_generator)
            return inputs * keras.ops.cast(noise > self.rate, inputs.dtype)
        return inputs * (1.0 - self.rate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def kernel_initializer(init: str | StdInit, seed: int) -> keras.initializers.Initializer:
    """The textbook's `he`/`xavier` (untruncated normal, fan-in scaling), a fixed std, or a
    Keras initializer by name.

    `xavier` here is the textbook's sqrt(1/fan_in), i.e. LeCun-normal scaling, not Keras'
    GlorotNormal (which is truncated and uses fan_in + fan_out).
    """
    if isinstance(init, StdInit):
        return keras.initializers.RandomNormal(mean=0.0, stddev=init.std, seed=seed)
    if init == "pytorch":  # nn.Linear's and nn.Conv2d's default: U(+-1/sqrt(fan_in))
        return keras.initializers.VarianceScaling(
            scale=1.0 / 3.0, mode="fan_in", distribution="uniform", seed=seed
        )
    if init in ("he", "xavier"):
        return keras.initializers.VarianceScaling(
            scale=2.0 if init == "he" else 1.0,
            mode="fan_in",
            distribution="untruncated_normal",
            seed=seed,
        )
    initializer = keras.initializers.get(init)
    if hasattr(initializer, "seed"):
        initializer.seed = seed
    return initializer


def bias_initializer(init: str | StdInit, fan_in: int, seed: int) -> Any:
    """Zeros, as Keras and the textbook start every bias; with `init: pytorch`, PyTorch's
    default U(+-1/sqrt(fan_in)) (Omnigrok's grokking setup scales biases with the kernels)."""
    if init != "pytorch":
        return "zeros"
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound, seed=seed)


def kernel_regularizer(spec: ModelSpec) -> keras.regularizers.Regularizer | None:
    """The textbook's penalty 0.5*lambda*sum(W^2) is Keras' L2(lambda/2); L1 is l1*sum(|W|)."""
    if spec.weight_decay == 0 and spec.l1 == 0:
        return None
    return keras.regularizers.L1L2(l1=spec.l1, l2=0.5 * spec.weight_decay)


def build_model(
    spec: ModelSpec,
    seed: int = 0,
    input_dim: int = 784,
    num_classes: int = 10,
    image_shape: tuple[int, ...] | None = None,
    builder_file: str | None = None,
) -> keras.Sequential:
    """Build the network a `ModelSpec` describes.

    Args:
        spec: the resolved model spec.
        seed: seeds every initializer and dropout layer, so the model is a function of
            (spec, seed) alone.
        input_dim: flattened input size (inputs come flat: a `cnn` reshapes them to images).
        num_classes: output logits.
        image_shape: one input's shape, (H, W) or (H, W, C); a `cnn` needs it.
        builder_file: with `model.builder`, the file its module was found in (`Cell`).
    """
    model = _network(spec, seed, input_dim, num_classes, image_shape, builder_file)
    if spec.init_scale is not None:
        scale_parameters(model, spec.init_scale)
    return model


def scale_parameters(model: keras.Model, scale: float) -> None:
    """Multiply every kernel and bias by `scale` (`model.init_scale`): Omnigrok multiplies all
    of a network's parameters after their initializers; batch norm's gamma and beta and its
    running statistics stay as they are (it normalises away a scaled kernel anyway)."""
    for variable in model.trainable_variables:
        if variable.path.split("/")[-1] in ("kernel", "bias"):
            variable.assign(variable * scale)


def _network(
    spec: ModelSpec,
    seed: int,
    input_dim: int,
    num_classes: int,
    image_shape: tuple[int, ...] | None,
    builder_file: str | None,
) -> keras.Sequential:
    """`build_model`'s network, as its initializers made it."""
    layers: list[keras.layers.Layer] = [keras.Input(shape=(input_dim,))]
    if spec.builder is not None:
        shape = image_shape or (input_dim,)
        if len(shape) > 1:
            layers.append(keras.layers.Reshape(shape, name="image"))
        built = builders.build(spec.builder, builder_file or "", shape, num_classes, seed)
        return keras.Sequential([*layers, built], name="builder")
    regularizer = kernel_regularizer(spec)
    fan_in = input_dim
    if spec.kind == "cnn":
        shape = conv_input_shape(image_shape)
        layers += _conv_stack(spec, seed, shape, regularizer)
        height, width = conv_output_sizes(spec, shape)[-1]
        fan_in = height * width * spec.conv[-1].filters
    sizes = [*spec.hidden, num_classes]
    for i, units in enumerate(sizes):
        last = i == len(sizes) - 1
        layers.append(
            keras.layers.Dense(
                units,
                kernel_initializer=kernel_initializer(spec.init, seed * 1000 + i),
                bias_initializer=bias_initializer(spec.init, fan_in, seed * 1000 + 300 + i),
                kernel_regularizer=regularizer,
                name="logits" if last else f"dense_{i + 1}",
            )
        )
        if last:
            break
        fan_in = units
        if spec.batch_norm:
            layers.append(_batch_norm(spec, f"bn_{i + 1}"))
        layers.append(keras.layers.Activation(ACTIVATIONS[spec.activation], name=f"act_{i + 1}"))
        if spec.dropout > 0:
            layers.append(_dropout(spec, seed * 1000 + 500 + i, f"drop_{i + 1}"))
    return keras.Sequential(layers, name=spec.kind)


def _batch_norm(spec: ModelSpec, name: str) -> keras.layers.Layer:
    """Batch norm with the textbook's momentum and epsilon (over a conv layer's channels)."""
    return keras.layers.BatchNormalization(
        momentum=spec.bn_momentum,
        epsilon=spec.bn_epsilon,
        # the textbook's running statistics start at 0, Keras' variance at 1
        moving_variance_initializer="zeros",
        name=name,
    )


def _dropout(spec: ModelSpec, seed: int, name: str) -> keras.layers.Layer:
    """The textbook's classic dropout, or Keras' inverted one (`dropout_style`)."""
    if spec.dropout_style == "classic":
        return ClassicDropout(spec.dropout, seed=seed, name=name)
    return keras.layers.Dropout(spec.dropout, seed=seed, name=name)


def _conv_stack(
    spec: ModelSpec, seed: int, shape: tuple[int, int, int], regularizer: Any
) -> list[keras.layers.Layer]:
    """Reshape to images, then Conv -> [BatchNorm] -> activation -> [MaxPool] -> [Dropout]
    per conv layer, then Flatten: the dense head follows. The same init, penalty, batch norm
    and dropout as the dense layers (the textbook's semantics)."""
    conv_output_sizes(spec, shape)
    layers: list[keras.layers.Layer] = [keras.layers.Reshape(shape, name="image")]
    channels = shape[2]
    for i, conv in enumerate(spec.conv):
        fan_in = conv.kernel * conv.kernel * channels
        channels = conv.filters
        layers.append(
            keras.layers.Conv2D(
                conv.filters,
                conv.kernel,
                strides=conv.stride,
                padding="valid",
                kernel_initializer=kernel_initializer(spec.init, seed * 1000 + 100 + i),
                bias_initializer=bias_initializer(spec.init, fan_in, seed * 1000 + 400 + i),
                kernel_regularizer=regularizer,
                name=f"conv_{i + 1}",
            )
        )
        if spec.batch_norm:
            layers.append(_batch_norm(spec, f"conv_bn_{i + 1}"))
        layers.append(
            keras.layers.Activation(ACTIVATIONS[spec.activation], name=f"conv_act_{i + 1}")
        )
        if conv.pool > 1:
            layers.append(keras.layers.MaxPooling2D(conv.pool, name=f"pool_{i + 1}"))
        if spec.dropout > 0:
            layers.append(_dropout(spec, seed * 1000 + 600 + i, f"conv_drop_{i + 1}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    return layers


def parameter_count(spec: ModelSpec, input_dim: int = 784, num_classes: int = 10) -> int:
    """Trainable parameters, by formula: weights and biases, plus gamma and beta per BN unit."""
    sizes = [input_dim, *spec.hidden, num_classes]
    dense = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
    return dense + (2 * sum(spec.hidden) if spec.batch_norm else 0)


def trainable_count(model: keras.Model) -> int:
    """The trainable parameters of a built network, as Keras' summary counts them: every
    trainable variable's size (batch norm's moving statistics are not trainable)."""
    return sum(math.prod(variable.shape) for variable in model.trainable_variables)


def kernel_stds(model: keras.Model) -> list[float]:
    """Measured standard deviation of each Dense kernel (for init checks)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            w = keras.ops.convert_to_numpy(layer.kernel)
            out.append(float(w.std()))
    return out


def expected_std(init: str | StdInit, fan_in: int, init_scale: float | None = None) -> float | None:
    """The std an init rule promises for a layer with `fan_in` inputs, times `init_scale`
    (None if not fixed)."""
    scale = init_scale if init_scale is not None else 1.0
    if isinstance(init, StdInit):
        return init.std * scale
    std = {
        "he": math.sqrt(2 / fan_in),
        "xavier": math.sqrt(1 / fan_in),
        "pytorch": math.sqrt(1 / (3 * fan_in)),  # U(+-a) has std a/sqrt(3)
    }.get(init)
    return std * scale if std is not None else None


# activation histograms (the textbook's figure 6-10 ff.): 30 bins over the activation's range
HISTOGRAM_BINS = 30
HISTOGRAM_RANGE = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}  # others: (0, 1), as the book


def histogram(values: Any, activation: str) -> dict[str, Any]:
    """Fractions of `values` in `HISTOGRAM_BINS` bins over the activation's range; values
    beyond it count in the end bins (`beyond` says what fraction that was)."""
    import numpy as np

    lo, hi = HISTOGRAM_RANGE.get(activation, (0.0, 1.0))
    flat = np.asarray(values, dtype=np.float64).ravel()
    counts, _ = np.histogram(np.clip(flat, lo, hi), bins=HISTOGRAM_BINS, range=(lo, hi))
    return {
        "fractions": [round(float(c), 6) for c in counts / max(len(flat), 1)],
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "beyond": float(np.mean((flat < lo) | (flat > hi))),
    }


def activation_probe(
    init: str | StdInit,
    activation: str,
    seed: int = 0,
    layers: int = 5,
    width: int = 100,
    samples: int = 1000,
) -> list[dict[str, Any]]:
    """The textbook's activation-distribution experiment: `samples` standard-normal inputs of
    `width` through `layers` bias-free layers of `width` units with this init and activation;
    one histogram per layer (see `histogram`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, width)).astype(np.float32)
    out = []
    for i in range(layers):
        kernel = kernel_initializer(init, seed * 1000 + 900 + i)((width, width))
        x = keras.ops.convert_to_numpy(
            ACTIVATIONS[activation](x @ keras.ops.convert_to_numpy(kernel))
        )
        out.append(histogram(x, activation))
    return out


def layer_histograms(model: keras.Model, x: np.ndarray, activation: str) -> list[dict[str, Any]]:
    """Each hidden layer's activations on `x` (inference mode) as a histogram (see `histogram`)."""
    out, current = [], keras.ops.convert_to_tensor(x)
    for layer in model.layers:
        current = layer(current, training=False)
        if isinstance(layer, keras.layers.Activation):
            out.append(histogram(keras.ops.convert_to_numpy(current), activation))
    return out


def activations_record(
    config: RunConfig, model: keras.Model, probe_x: np.ndarray, at_init: Any, seed: int
) -> dict[str, Any]:
    """The `activations.json` of a run with `train.log_activations`: the textbook's probe and
    the network's hidden layers at initialisation (`at_init`) and now, after training."""
    activation = config.model.activation
    return {
        "activation": activation,
        "init": describe_init(config.model.init),
        "range": list(HISTOGRAM_RANGE.get(activation, (0.0, 1.0))),
        "bins": HISTOGRAM_BINS,
        "probe": activation_probe(config.model.init, activation, seed),
        "network_init": at_init,
        "network_trained": layer_histograms(model, probe_x, activation),
        "probe_images": len(probe_x),
    }


@dataclass(frozen=True, eq=False)
class SavedNetwork:
    """A trained network in a Keras file, on its way to its run's record (`log_model`).

    A path and two small arrays: it pickles cheaply, so a worker process hands it to the
    parent, which logs it (workers never touch the store). The file is alone in a temporary
    folder; whoever logs it removes the folder (`discard`).
    """

    path: str  # the `.keras` file
    example: np.ndarray  # a few test images: the logged model's input example
    outputs: np.ndarray  # the network's logits for them

    def load(self) -> keras.Model:
        """The network, read back (its classic dropout is registered by this module)."""
        return keras.saving.load_model(self.path)

    def discard(self) -> None:
        shutil.rmtree(Path(self.path).parent, ignore_errors=True)


def save_network(
    spec: ModelSpec,
    weights: list[np.ndarray],
    seed: int,
    shape: tuple[int, int, tuple[int, ...], str | None],
    example: np.ndarray,
) -> SavedNetwork:
    """The network `spec` describes (built as `build_model` builds it: its initialisers and
    penalties are in its configuration) holding `weights`, saved to a new temporary folder.

    `shape` is `build_model`'s (input_dim, num_classes, image_shape, builder_file).
    """
    network = build_model(spec, seed, *shape)
    network.set_weights(weights)
    path = Path(tempfile.mkdtemp(prefix="suite-network-")) / "network.keras"
    network.save(path)
    outputs = keras.ops.convert_to_numpy(network(example, training=False))
    return SavedNetwork(str(path), example, outputs)
