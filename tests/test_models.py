"""The MLP builder: sizes, initialisation, both dropout styles, the penalty, layer order."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from suite import models
from suite.spec import ModelSpec, StdInit


def _spec(**fields: object) -> ModelSpec:
    return ModelSpec.model_validate(fields)


def _kernels(model: keras.Model) -> list[np.ndarray]:
    return [
        keras.ops.convert_to_numpy(layer.kernel)
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
    ]


def _trainable(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hidden", "batch_norm", "expected"),
    [
        # 784*100+100 + 5*(100*100+100) + 100*10+10
        ([100] * 6, False, 130_010),
        # plus gamma and beta for each of the 600 hidden units
        ([100] * 6, True, 130_010 + 2 * 600),
        # 784-100-100-10
        ([100, 100], False, 89_610),
        ([100, 100], True, 89_610 + 2 * 200),
    ],
)
def test_parameter_count(hidden: list[int], batch_norm: bool, expected: int) -> None:
    spec = _spec(hidden=hidden, batch_norm=batch_norm)
    model = models.build_model(spec)
    assert models.parameter_count(spec) == expected
    assert _trainable(model) == expected
    # BN's moving mean and variance are weights too, but not trained
    moving = 2 * sum(hidden) if batch_norm else 0
    assert model.count_params() == expected + moving


def test_input_and_output_shapes() -> None:
    model = models.build_model(_spec(hidden=[7]), input_dim=12, num_classes=3)
    out = model(np.zeros((5, 12), np.float32))
    assert tuple(out.shape) == (5, 3)
    assert (
        models.parameter_count(_spec(hidden=[7]), input_dim=12, num_classes=3)
        == 12 * 7 + 7 + 7 * 3 + 3
    )


# --- initialisation -------------------------------------------------------------------------

# fan_in differs from fan_out everywhere, so xavier (1/fan_in) and Keras' Glorot differ by >10%
WIDE = [1000, 400]


@pytest.mark.parametrize(
    ("init", "rule"),
    [
        ("he", lambda fan_in: math.sqrt(2 / fan_in)),
        ("xavier", lambda fan_in: math.sqrt(1 / fan_in)),
        ({"std": 0.01}, lambda fan_in: 0.01),
    ],
    ids=["he", "xavier", "std"],
)
def test_kernel_std_follows_the_init_rule(init: object, rule: object) -> None:
    spec = _spec(hidden=WIDE, init=init)
    model = models.build_model(spec, seed=3)
    fan_ins = [784, *WIDE]
    measured = models.kernel_stds(model)
    assert len(measured) == 3
    for fan_in, std, kernel in zip(fan_ins, measured, _kernels(model), strict=True):
        target = rule(fan_in)  # type: ignore[operator]
        assert std == pytest.approx(target, rel=0.1), (fan_in, std, target)
        assert models.expected_std(spec.init, fan_in) == pytest.approx(target)
        assert abs(float(kernel.mean())) < 0.05 * target
    # the textbook's normal is untruncated: a 784x1000 draw has values beyond 3 std
    first = _kernels(model)[0]
    assert np.abs(first).max() > 3.5 * rule(784)  # type: ignore[operator]


def test_xavier_is_not_keras_glorot() -> None:
    xavier = models.kernel_stds(models.build_model(_spec(hidden=WIDE, init="xavier")))
    glorot = models.kernel_stds(models.build_model(_spec(hidden=WIDE, init="glorot_normal")))
    assert xavier[0] == pytest.approx(math.sqrt(1 / 784), rel=0.05)
    assert glorot[0] == pytest.approx(math.sqrt(2 / (784 + 1000)), rel=0.05)


def test_keras_initializer_by_name() -> None:
    model = models.build_model(_spec(hidden=[300], init="glorot_uniform"), seed=1)
    kernel = _kernels(model)[0]
    limit = math.sqrt(6 / (784 + 300))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.95 * limit  # uniform: it reaches the edge
    assert models.expected_std("glorot_uniform", 784) is None


def test_biases_start_at_zero() -> None:
    model = models.build_model(_spec(hidden=[20, 20]), seed=0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            assert not np.any(keras.ops.convert_to_numpy(layer.bias))


def test_model_is_a_function_of_spec_and_seed() -> None:
    spec = _spec(hidden=[30, 20], init={"std": 0.1})
    a = _kernels(models.build_model(spec, seed=5))
    b = _kernels(models.build_model(spec, seed=5))
    c = _kernels(models.build_model(spec, seed=6))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    # layers get their own seeds, not copies of one draw
    assert not np.array_equal(a[1][:20, :20], a[0][:20, :20])


def test_describe_init() -> None:
    from suite.spec import describe_init

    assert describe_init(StdInit(std=0.01)) == "std=0.01"
    assert describe_init("he") == "he"


# --- dropout --------------------------------------------------------------------------------

RATE = 0.3


@pytest.fixture(scope="module")
def positive_input() -> np.ndarray:
    # strictly positive, so a zero in the output can only be a dropped unit
    return np.random.default_rng(0).uniform(0.5, 2.0, size=(200, 500)).astype(np.float32)


def _dropout_layer(style: str) -> keras.layers.Layer:
    model = models.build_model(_spec(hidden=[500], dropout=RATE, dropout_style=style), seed=2)
    drops = [layer for layer in model.layers if layer.name.startswith("drop_")]
    assert len(drops) == 1
    return drops[0]


def test_classic_dropout_training_masks_without_rescaling(positive_input: np.ndarray) -> None:
    layer = _dropout_layer("classic")
    assert isinstance(layer, models.ClassicDropout) and layer.rate == RATE
    out = keras.ops.convert_to_numpy(layer(positive_input, training=True))
    kept = out != 0
    # every output is either dropped or exactly its input
    np.testing.assert_array_equal(out[kept], positive_input[kept])
    assert kept.mean() == pytest.approx(1 - RATE, abs=0.01)
    # a fresh mask each call
    again = keras.ops.convert_to_numpy(layer(positive_input, training=True))
    assert not np.array_equal(kept, again != 0)


def test_classic_dropout_inference_scales_by_keep_rate(positive_input: np.ndarray) -> None:
    layer = _dropout_layer("classic")
    out = keras.ops.convert_to_numpy(layer(positive_input, training=False))
    np.testing.assert_allclose(out, positive_input * (1 - RATE), rtol=1e-6)


def test_inverted_dropout_rescales_in_training(positive_input: np.ndarray) -> None:
    layer = _dropout_layer("inverted")
    assert isinstance(layer, keras.layers.Dropout)
    out = keras.ops.convert_to_numpy(layer(positive_input, training=True))
    kept = out != 0
    np.testing.assert_allclose(out[kept], positive_input[kept] / (1 - RATE), rtol=1e-6)
    assert kept.mean() == pytest.approx(1 - RATE, abs=0.01)
    inference = keras.ops.convert_to_numpy(layer(positive_input, training=False))
    np.testing.assert_array_equal(inference, positive_input)


def test_classic_dropout_round_trips_its_config() -> None:
    layer = models.ClassicDropout(0.25, seed=9, name="d")
    clone = models.ClassicDropout.from_config(layer.get_config())
    assert (clone.rate, clone.seed, clone.name) == (0.25, 9, "d")


# --- the penalty ----------------------------------------------------------------------------


def test_weight_decay_is_half_lambda_sum_of_squares_of_every_kernel() -> None:
    lam = 0.1
    model = models.build_model(_spec(hidden=[30, 20], weight_decay=lam), seed=0)
    kernels = _kernels(model)
    assert len(kernels) == 3  # two hidden layers and the output layer
    expected = 0.5 * lam * sum(float((k.astype(np.float64) ** 2).sum()) for k in kernels)
    got = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    assert len(model.losses) == 3  # kernels only: biases carry no penalty
    assert got == pytest.approx(expected, rel=1e-5)


def test_l1_is_l1_sum_of_abs_of_every_kernel() -> None:
    l1 = 0.003
    model = models.build_model(_spec(hidden=[30, 20], l1=l1), seed=0)
    expected = l1 * sum(float(np.abs(k.astype(np.float64)).sum()) for k in _kernels(model))
    got = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    assert got == pytest.approx(expected, rel=1e-5)


def test_l1_and_weight_decay_add_up() -> None:
    model = models.build_model(_spec(hidden=[16], l1=0.01, weight_decay=0.2), seed=0)
    kernels = [k.astype(np.float64) for k in _kernels(model)]
    expected = sum(0.01 * np.abs(k).sum() + 0.5 * 0.2 * (k**2).sum() for k in kernels)
    got = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    assert got == pytest.approx(float(expected), rel=1e-5)


def test_no_penalty_without_regularisation() -> None:
    model = models.build_model(_spec(hidden=[16]), seed=0)
    assert model.losses == []
    assert models.kernel_regularizer(_spec()) is None


# --- layer order and batch norm -------------------------------------------------------------


def test_layer_order() -> None:
    spec = _spec(hidden=[8, 8], batch_norm=True, dropout=0.2)
    kinds = [type(layer).__name__ for layer in models.build_model(spec).layers]
    per_hidden = ["Dense", "BatchNormalization", "Activation", "ClassicDropout"]
    assert kinds == per_hidden * 2 + ["Dense"]


def test_layer_order_without_extras() -> None:
    kinds = [type(layer).__name__ for layer in models.build_model(_spec(hidden=[8, 8])).layers]
    assert kinds == ["Dense", "Activation", "Dense", "Activation", "Dense"]


def test_output_is_logits() -> None:
    model = models.build_model(_spec(hidden=[8]), seed=0)
    assert model.layers[-1].name == "logits"
    assert model.layers[-1].activation is keras.activations.linear


def test_batch_norm_settings_come_from_the_spec() -> None:
    spec = _spec(hidden=[8, 8], batch_norm=True, bn_momentum=0.8, bn_epsilon=1e-4)
    bns = [
        layer
        for layer in models.build_model(spec).layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(bns) == 2
    for bn in bns:
        assert bn.momentum == pytest.approx(0.8)
        assert bn.epsilon == pytest.approx(1e-4)
        # the textbook's running variance starts at 0 (Keras: 1)
        assert not np.any(keras.ops.convert_to_numpy(bn.moving_variance))


def test_batch_norm_defaults_are_the_textbook_ones() -> None:
    bn = next(
        layer
        for layer in models.build_model(_spec(hidden=[8], batch_norm=True)).layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert bn.momentum == pytest.approx(0.9)
    assert bn.epsilon == pytest.approx(1e-6)


@pytest.mark.parametrize(
    ("activation", "x", "y"),
    [("relu", -2.0, 0.0), ("leaky_relu", -2.0, -0.02), ("tanh", 0.5, math.tanh(0.5))],
)
def test_activation(activation: str, x: float, y: float) -> None:
    model = models.build_model(_spec(hidden=[1], activation=activation), seed=0)
    act = next(layer for layer in model.layers if layer.name == "act_1")
    out = keras.ops.convert_to_numpy(act(np.array([[x]], np.float32)))
    assert float(out[0, 0]) == pytest.approx(y, rel=1e-5)


def test_pytorch_init_draws_kernels_and_biases_as_pytorch_does() -> None:
    spec = ModelSpec(hidden=[400, 300], init="pytorch")
    model = models.build_model(spec, seed=3)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    for layer, fan_in in zip(dense, (784, 400, 300), strict=True):
        bound = 1.0 / np.sqrt(fan_in)
        kernel, bias = (np.asarray(v) for v in layer.get_weights())
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
        assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
        assert np.abs(bias).max() > bound / 2  # drawn, not zeros
    scaled = models.build_model(
        ModelSpec(hidden=[400, 300], init="pytorch", init_scale=8.0), seed=3
    )
    for mine, theirs in zip(model.get_weights(), scaled.get_weights(), strict=True):
        np.testing.assert_allclose(theirs, 8.0 * mine, rtol=1e-6)
