"""Width-padded populations: design points that differ only in channel widths, as one program.

`train_population` (population.py) trains its members as one program, so their states
must have one shape. Members whose configs are identical up to the seed share it already
(`SameShape`). Members that also differ in channel widths (`spec.WIDTH_FIELDS`: squeeze ratio,
pct_3x3, base_e / incr_e / freq, explicit fire_widths) are padded (`Padded`): the program is the
network whose every Fire module has the elementwise largest (squeeze, expand1x1, expand3x3) of
the members (`padded_spec`), and each member is its own narrow network embedded in it:

- its weights sit at the positions `spec.channel_masks(plan, padded_plan)` gives (every conv
  keeps its first channels; a Fire module's output is [expand1x1 | expand3x3], each half padded
  on its own, so the next layer's input mask follows that concatenation); everything else is 0;
- the model sees `trainable * mask` (`MaskedWidths`, the trainer's reparam), so the gradient of
  every padded weight is exactly 0 before the optimiser; with zero weights and zero gradients,
  Adam's and momentum's moments, weight decay (decoupled or Caffe's L2, both `wd * w`) and
  gradient clipping leave them 0, and the gradient/parameter norms and the non-finite guard see
  only the real weights;
- a padded channel computes exactly 0: zero kernel and bias give a zero pre-activation; its
  BatchNorm normalises a constant 0 to 0 and adds its (masked, zero) bias, and BatchNorm is per
  channel, so the real channels' statistics are those of the narrow network; ReLU's gradient at 0
  is 0 in JAX;
- dropout before conv10 draws the narrow network's mask at the narrow shape and places it on the
  member's channels (squeezenet.py `_dropout_mask`), so each member sees its lone trial's mask;
- its init is its lone trial's (the narrow point's compiled initialiser, then embedded: the
  embedded values are bit for bit the narrow init), and what it checkpoints is the narrow state
  (`extract`), so its checkpoints, spec.json, complexity.json and result.json are those of the
  lone narrow trial and either can resume the other.

The padded convs sum over zero inputs too, so a member's numbers match its lone trial's only up to
floating point summation order (tests/test_padding.py measures the drift).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

from sqzexplore.config import ConfigError, validate_config
from sqzexplore.config import width_free as width_free  # population.check_population reads it
from sqzexplore.models.spec import (
    ChannelMask,
    SqueezeNetSpec,
    channel_masks,
    padded_fire_widths,
)
from sqzexplore.train import programs
from sqzexplore.train.state import TrainState


class PaddingError(ConfigError):
    """Design points that cannot be padded to one shape."""


def padded_spec(specs: Sequence[SqueezeNetSpec]) -> SqueezeNetSpec:
    """The spec whose Fire modules have the elementwise largest widths of `specs` (which must
    differ only in `WIDTH_FIELDS`), as explicit `fire_widths`."""
    try:
        return specs[0].replace(name="padded", fire_widths=padded_fire_widths(specs))
    except ValueError as e:
        raise PaddingError(f"the members' widths cannot be padded to one network: {e}") from None


def leaf_masks(masks: dict[str, ChannelMask], tree: dict) -> dict:
    """Boolean arrays over `tree` (the padded params or batch_stats, a nested dict of arrays):
    True where a value belongs to the narrow network of `masks`."""

    def mask(path, leaf):
        keys = [p.key for p in path]
        name, kind = "/".join(keys[:-1]), keys[-1]
        if name.endswith("_bn"):  # BatchNorm scale/bias, running mean/var: per output channel
            return np.asarray(masks[name.removesuffix("_bn")].outputs, bool)
        m = masks[name]
        outputs = np.asarray(m.outputs, bool)
        if kind == "bias":
            return outputs
        inputs = np.asarray(m.inputs, bool)
        if leaf.shape[2] != inputs.size:  # a grouped conv (never widened): every input kept
            inputs = np.ones(leaf.shape[2], bool)
        kept = inputs[None, None, :, None] & outputs[None, None, None, :]
        return np.broadcast_to(kept, leaf.shape).copy()

    out = jax.tree_util.tree_map_with_path(mask, tree)
    for m, leaf in zip(jax.tree.leaves(out), jax.tree.leaves(tree), strict=True):
        if m.shape != tuple(leaf.shape):  # a plan that does not describe this model
            raise PaddingError(f"a channel mask of shape {m.shape} for a leaf of {leaf.shape}")
    return out


def embed_tree(narrow: Any, masks: Any) -> Any:
    """Zeros of the masks' shapes with `narrow`'s values at the True positions (row-major: the
    masks are products of per-axis prefixes, so that order is the narrow arrays' own)."""

    def put(n, m):
        out = np.zeros(m.shape, np.asarray(n).dtype)
        out[m] = np.asarray(n).ravel()
        return out

    return jax.tree.map(put, narrow, masks)


def extract_tree(padded: Any, masks: Any, like: Any) -> Any:
    """The narrow values of `padded` (shaped as `like`): `embed_tree` undone."""
    return jax.tree.map(lambda p, m, n: np.asarray(p)[m].reshape(n.shape), padded, masks, like)


class MaskedWidths:
    """The trainer's reparam of a padded population: the model sees `trainable * mask`.

    `aux` (per member, stacked with the state): `mask`, the params-shaped 0/1 float32 masks, and
    `dropout_index` / `dropout_n`, the conv10 input channels' narrow indices (-1: padded) and
    count. `init` gives the shapes only (every channel real); `Padded` builds each member's.
    """

    def __init__(self, classifier_inputs: int):
        self.classifier_inputs = classifier_inputs

    def init(self, params: Any) -> tuple[Any, dict]:
        c = self.classifier_inputs
        aux = {
            "mask": jax.tree.map(jnp.ones_like, params),
            "dropout_index": jnp.arange(c, dtype=jnp.int32),
            "dropout_n": jnp.asarray(c, jnp.int32),
        }
        return params, aux

    def apply(self, trainable: Any, aux: dict) -> Any:
        # x * 1.0 is x exactly; x * 0.0 routes no gradient to a padded weight.
        return jax.tree.map(lambda p, m: p * m, trainable, aux["mask"])

    def call_kwargs(self, aux: dict) -> dict:
        return {"dropout_channels": (aux["dropout_index"], aux["dropout_n"])}


class SameShape:
    """Members identical up to the seed: the point's cached programs, states as they are."""

    def __init__(self, configs: Sequence[ml_collections.ConfigDict], mesh):
        self.config = configs[0]
        self.specs = [validate_config(c) for c in configs]
        self.spec = self.specs[0]
        self.programs = programs.for_run(self.config, self.spec, mesh)

    def describe(self) -> str:
        return ""

    def init(self, index: int, seed: int) -> TrainState:
        return self.programs.init(seed)

    def abstract(self, index: int) -> TrainState:
        return self.programs.abstract_state()

    def embed(self, index: int, state: TrainState) -> TrainState:
        return state

    def extract(self, index: int, state: TrainState) -> TrainState:
        return state


class Padded(SameShape):
    """Members differing in channel widths, padded to one network (this module's docstring)."""

    def __init__(self, configs: Sequence[ml_collections.ConfigDict], mesh):
        self.specs = [validate_config(c) for c in configs]
        if any(s.dropout > 0 for s in self.specs) and not jax.config.jax_threefry_partitionable:
            # The narrow dropout mask is read out of one flat draw only in this mode.
            raise PaddingError(
                "width-padded members with dropout need jax_threefry_partitionable=True (JAX's "
                "default since 0.5)"
            )
        self.spec = padded_spec(self.specs)
        self.config = copy.deepcopy(configs[0])
        with self.config.unlocked():
            self.config.model.name = self.spec.name
            self.config.model.fire_widths = self.spec.fire_widths
        validate_config(self.config)
        padded_plan = self.spec.layer_plan()
        try:
            self.masks = [channel_masks(s.layer_plan(), padded_plan) for s in self.specs]
        except ValueError as e:
            raise PaddingError(f"the members cannot be padded to one network: {e}") from None
        # The narrow points' own programs: their compiled initialisers (each member's init is
        # its lone trial's) and restore targets; cached, so a later lone trial reuses them.
        self.narrow = [programs.for_run(c, s, mesh) for c, s in zip(configs, self.specs)]
        classifier_in = padded_plan.conv("conv10").in_channels
        self.programs = programs.for_run(
            self.config, self.spec, mesh, reparam=MaskedWidths(classifier_in)
        )
        self._trees: dict[int, tuple] = {}

    def describe(self) -> str:
        return (
            f"members of {len(set(self.specs))} widths padded to one network: fire widths "
            f"{' '.join('x'.join(map(str, w)) for w in self.spec.fire_widths)} (squeeze x "
            "expand1x1 x expand3x3)"
        )

    def _layout(self, index: int) -> tuple:
        """(param masks, batch_stats masks, narrow abstract state, flat param index, aux)."""
        if index not in self._trees:
            padded = self.programs.abstract_state()
            narrow = self.narrow[index].abstract_state()
            pm = leaf_masks(self.masks[index], padded.params)
            bm = leaf_masks(self.masks[index], padded.batch_stats)
            # Flat positions of the narrow params in the padded flat vector (ravel_pytree order:
            # the optimiser's state holds flat vectors).
            flat = ravel_pytree(jax.tree.map(lambda m: np.asarray(m, np.float32), pm))[0]
            where = np.flatnonzero(np.asarray(flat))
            inputs = np.asarray(self.masks[index]["conv10"].inputs, bool)
            index_map = np.where(inputs, np.cumsum(inputs) - 1, -1).astype(np.int32)
            aux = {
                "mask": jax.tree.map(lambda m: m.astype(np.float32), pm),
                "dropout_index": index_map,
                "dropout_n": np.asarray(int(inputs.sum()), np.int32),
            }
            self._trees[index] = (pm, bm, narrow, where, aux)
        return self._trees[index]

    def init(self, index: int, seed: int) -> TrainState:
        return self.embed(index, self.narrow[index].init(seed))

    def abstract(self, index: int) -> TrainState:
        return self.narrow[index].abstract_state()

    def embed(self, index: int, state: TrainState) -> TrainState:
        """Member `index`'s narrow state (host values) in the padded program's shapes."""
        pm, bm, narrow, where, aux = self._layout(index)
        n_params, p_params = where.size, int(sum(m.size for m in jax.tree.leaves(pm)))

        def flat(leaf):
            leaf = np.asarray(leaf)
            if leaf.shape != (n_params,):
                return leaf
            out = np.zeros((p_params,), leaf.dtype)
            out[where] = leaf
            return out

        return state.replace(
            params=embed_tree(state.params, pm),
            batch_stats=embed_tree(state.batch_stats, bm),
            opt_state=jax.tree.map(flat, state.opt_state),
            aux=jax.tree.map(np.asarray, aux),
        )

    def extract(self, index: int, state: TrainState) -> TrainState:
        """Member `index`'s narrow state (host values) out of its padded one."""
        pm, bm, narrow, where, _ = self._layout(index)
        p_params = int(sum(m.size for m in jax.tree.leaves(pm)))
        flat = lambda leaf: np.asarray(leaf)[where] if np.shape(leaf) == (p_params,) else leaf
        return state.replace(
            params=extract_tree(state.params, pm, narrow.params),
            batch_stats=extract_tree(state.batch_stats, bm, narrow.batch_stats),
            opt_state=jax.tree.map(lambda x: np.asarray(flat(x)), state.opt_state),
            aux={},  # the narrow trial has no reparam
        )


def layout(configs: Sequence[ml_collections.ConfigDict], mesh) -> SameShape:
    """`SameShape` for configs identical up to the seed, `Padded` for ones that also differ in
    channel widths (population.check_population has checked they differ in nothing else)."""
    fires = [validate_config(c).fires() for c in configs]
    same = all(f == fires[0] for f in fires[1:])
    return SameShape(configs, mesh) if same else Padded(configs, mesh)
