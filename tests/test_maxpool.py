"""Tests for `max_pool_ceil`'s custom gradient: bit-identical to `jax.grad` of the plain
reduce_window max pool (select_and_scatter), ties included, in float32 and bfloat16, under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sqzexplore.models import max_pool_ceil, preset

# (pool_size, pool_stride, pool_ceil): the paper's 3/2 ceil pool, floor mode, non-overlapping,
# stride 1, and windows wider than twice the stride (a cell is then in up to 9 windows).
POOLS = [
    (3, 2, True),
    (3, 2, False),
    (2, 2, True),
    (3, 1, True),
    (5, 3, True),
    (3, 3, False),
    (4, 2, True),
    (5, 2, True),
]
SIZES = [(13, 13), (8, 11), (4, 6)]


def plain_max_pool_ceil(x, spec):
    """The implementation before the custom gradient: JAX differentiates it with
    select_and_scatter, the reference the custom gradient must match exactly."""
    k, s = spec.pool_size, spec.pool_stride
    pads = [(0, 0)]
    for size in x.shape[1:3]:
        out = spec.pool_out(size)
        pads.append((0, max(0, (out - 1) * s + k - size)))
    pads.append((0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), padding=pads)


def pool_spec(k, s, ceil):
    return preset("v1.0").replace(pool_size=k, pool_stride=s, pool_ceil=ceil)


def grads(x, spec, grad_y):
    """(reference, new) input gradients for output cotangent `grad_y`; the new one under jit."""
    _, ref_vjp = jax.vjp(lambda v: plain_max_pool_ceil(v, spec), x)
    _, new_vjp = jax.vjp(lambda v: max_pool_ceil(v, spec), x)
    return ref_vjp(grad_y)[0], jax.jit(new_vjp)(grad_y)[0]


def as_f32(a):
    return np.asarray(a, np.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize(("k", "s", "ceil"), POOLS)
def test_grad_matches_select_and_scatter_exactly(k, s, ceil, ties, dtype):
    spec = pool_spec(k, s, ceil)
    rng = np.random.default_rng(k * 100 + s * 10 + ceil)
    for h, w in SIZES:
        if min(h, w) < k:
            continue
        shape = (2, h, w, 3)
        # Small integers make many windows hold several equal maxima.
        raw = rng.integers(0, 3, shape) if ties else rng.normal(size=shape)
        x = jnp.asarray(raw, dtype)
        y = max_pool_ceil(x, spec)
        assert y.shape == (2, spec.pool_out(h), spec.pool_out(w), 3)
        grad_y = jnp.asarray(rng.normal(size=y.shape), dtype)
        ref, new = grads(x, spec, grad_y)
        assert new.dtype == dtype and new.shape == x.shape
        np.testing.assert_array_equal(as_f32(new), as_f32(ref), err_msg=f"{h}x{w}")


@pytest.mark.parametrize(("k", "s", "ceil"), POOLS)
def test_each_window_sends_its_gradient_to_one_first_maximum(k, s, ceil):
    """With a one-hot cotangent, exactly one input cell gets the window's gradient: the first
    maximal element of that window in row-major order (the tie rule, stated independently)."""
    spec = pool_spec(k, s, ceil)
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.integers(0, 2, (1, 9, 10, 1)), jnp.float32)
    y = max_pool_ceil(x, spec)
    grad_fn = jax.jit(jax.vjp(lambda v: max_pool_ceil(v, spec), x)[1])
    xs = np.asarray(x)[0, :, :, 0]
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            one_hot = jnp.zeros(y.shape).at[0, i, j, 0].set(3.0)
            g = np.asarray(grad_fn(one_hot)[0])[0, :, :, 0]
            window = xs[i * s : i * s + k, j * s : j * s + k]  # numpy clips at the border
            di, dj = np.unravel_index(np.argmax(window), window.shape)  # argmax: first max
            expected = np.zeros_like(xs)
            expected[i * s + di, j * s + dj] = 3.0
            np.testing.assert_array_equal(g, expected, err_msg=f"window ({i}, {j})")


def test_gradient_sums_to_total_output_gradient():
    spec = pool_spec(3, 2, True)
    x = jnp.asarray(np.random.default_rng(1).integers(0, 3, (2, 13, 13, 4)), jnp.float32)
    loss = lambda v: jnp.sum(max_pool_ceil(v, spec))  # noqa: E731
    g = jax.jit(jax.grad(loss))(x)
    assert float(jnp.sum(g)) == np.prod(max_pool_ceil(x, spec).shape)
    assert set(np.unique(np.asarray(g))) <= {0.0, 1.0, 2.0, 3.0, 4.0}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(("k", "s", "ceil"), POOLS)
def test_forward_is_unchanged(k, s, ceil, dtype):
    spec = pool_spec(k, s, ceil)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 13, 11, 5)), dtype)
    for fn in (max_pool_ceil, jax.jit(max_pool_ceil, static_argnums=1)):
        y = fn(x, spec)
        assert y.dtype == dtype
        np.testing.assert_array_equal(as_f32(y), as_f32(plain_max_pool_ceil(x, spec)))


def test_grad_through_model_sized_map_under_jit():
    """The v1.0 pool on a conv1-sized map (111x111 -> 55x55), as the train step sees it."""
    spec = preset("v1.0")
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 111, 111, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(2, 55, 55, 8)), jnp.float32)
    new = jax.jit(jax.grad(lambda v: jnp.sum(max_pool_ceil(v, spec) * w)))(x)
    ref = jax.jit(jax.grad(lambda v: jnp.sum(plain_max_pool_ceil(v, spec) * w)))(x)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(ref))
