"""The flat optimiser: the same update as optax's transformations on the parameter tree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sqzexplore import optim
from sqzexplore.config import base_config
from sqzexplore.models.spec import preset
from sqzexplore.train.state import init_state, model_graphdef
from sqzexplore.train.step import make_train_step


def _tree(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
        "bn": {"bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
        "head": {"kernel": jnp.asarray(rng.normal(size=(1, 1, 4, 3)), jnp.float32)},
    }


def _config(name, **fields):
    c = base_config().optim
    c.name = name
    c.schedule = "cosine"
    for k, v in fields.items():
        c[k] = v
    return c


def _reference(c, schedule):
    """optax's own transformation on the tree, as the trainer used it before flattening."""
    mask = optim.decay_mask if c.decay_kernels_only else None
    parts = [optax.clip_by_global_norm(c.grad_clip_norm)] if c.grad_clip_norm > 0 else []
    if c.name == "sgd":
        if c.weight_decay > 0:
            parts.append(optax.add_decayed_weights(c.weight_decay, mask))
        parts.append(optax.sgd(schedule, momentum=c.momentum or None, nesterov=c.nesterov))
    else:
        parts.append(
            optax.adamw(schedule, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, mask=mask)
        )
    return optax.chain(*parts)


@pytest.mark.parametrize(
    "name, fields",
    [
        ("adamw", dict(weight_decay=0.1)),
        ("adamw", dict(weight_decay=0.1, decay_kernels_only=False, grad_clip_norm=0.5)),
        ("sgd", dict(weight_decay=0.05, momentum=0.9)),
        ("sgd", dict(weight_decay=0.05, momentum=0.9, nesterov=True, decay_kernels_only=False)),
        ("sgd", dict(weight_decay=0.0, momentum=0.0)),
    ],
)
def test_flat_update_equals_optax_on_the_tree(name, fields):
    c = _config(name, lr=0.1, **fields)
    tx, schedule = optim.make_optimizer(c, 10, 2)
    ref = _reference(c, schedule)
    params = _tree()
    flat_state, ref_state = tx.init(params), ref.init(params)
    p_flat, p_ref = params, params
    for i in range(4):
        grads = _tree(seed=10 + i)
        u_flat, flat_state = tx.update(grads, flat_state, p_flat)
        u_ref, ref_state = ref.update(grads, ref_state, p_ref)
        p_flat = optax.apply_updates(p_flat, u_flat)
        p_ref = optax.apply_updates(p_ref, u_ref)
    for a, b in zip(jax.tree.leaves(p_flat), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_weight_decay_skips_biases_and_batchnorm_unless_asked():
    """With zero gradients only decay moves a parameter: kernels shrink, biases stay put."""
    c = _config("sgd", lr=0.1, weight_decay=0.5, momentum=0.0, schedule="constant")
    tx, _ = optim.make_optimizer(c, 10, 0)
    params = _tree()
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_array_equal(updates["bn"]["bias"], 0.0)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.05 * params["conv"]["kernel"])
    c.decay_kernels_only = False
    tx, _ = optim.make_optimizer(c, 10, 0)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["bn"]["bias"], -0.05 * params["bn"]["bias"])


def test_optimiser_state_is_flat():
    tx, _ = optim.make_optimizer(_config("adamw"), 10, 0)
    params = _tree()
    n = sum(p.size for p in jax.tree.leaves(params))
    vectors = [x for x in jax.tree.leaves(tx.init(params)) if x.ndim]
    assert vectors and all(x.shape == (n,) for x in vectors)  # mu and nu, one vector each


def test_the_step_wants_a_flat_optimiser():
    spec = preset("digits", stem_filters=8, base_e=8, incr_e=8, num_fire=2, pool_after=())
    with pytest.raises(TypeError, match="FlatOptimizer"):
        make_train_step(
            model_graphdef(spec), optax.sgd(0.1), optax.constant_schedule(0.1), num_classes=10
        )
    tx = optim.FlatOptimizer(optax.sgd(0.1))
    state = jax.jit(lambda: init_state(spec, tx, 0))()
    step = jax.jit(
        make_train_step(model_graphdef(spec), tx, optax.constant_schedule(0.1), num_classes=10)
    )
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 16, 1)), jnp.float32)
    new, metrics = step(state, x, jnp.arange(8) % 10)
    assert int(new.step) == 1 and np.isfinite(float(metrics["grad_norm"]))
    moved = jax.tree.map(lambda a, b: not bool(jnp.array_equal(a, b)), new.params, state.params)
    assert any(jax.tree.leaves(moved))
