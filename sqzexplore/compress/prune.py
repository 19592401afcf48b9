"""Magnitude pruning of conv kernels, stage 1 of Deep Compression (docs/paper.md).

Each conv kernel keeps exactly `round(density * n)` of its `n` weights, those of largest
magnitude (ties go to the lower flat C-order index, so a mask never depends on the sort
implementation); biases and BatchNorm parameters are never pruned. A layer always keeps at least
one weight, since a layer with none would cut the network.

Densities come in four forms:

* `"released"` (the default): the per-layer densities of the authors' compressed SqueezeNet v1.0
  (the paper's 8-bit "33% density" model keeps 422,083 of 1,244,448 weights): squeeze /
  expand1x1 / expand3x3 of fire2-5 100/100/33%, fire6 99/50/33, fire7 50/99/33, fire8 99/50/30,
  fire9 50/99/30, conv1 98.5%, conv10 20.7%. Nets with another number of Fire modules map each
  Fire module to the paper Fire module at the same relative depth; a complex-bypass 1x1 conv
  takes its Fire module's squeeze density.
* a number: one density for every conv kernel;
* a mapping `{layer: density}` keyed by layer (`"fire2/squeeze"`) or kernel path
  (`"fire2/squeeze/kernel"`); layers it does not name stay dense (density 1.0).

Parameter trees are nested dicts as returned by `nnx.State.to_pure_dict()` (an `nnx.State` is
converted on the way in); `flatten_params` / `unflatten_params` turn them into flat
`{"fire2/squeeze/kernel": array}` dicts, ordered by position in the network, and back. Masks are
nested dicts holding only the kernels, mirroring the parameter tree, so the trainer can apply them
inside `jax.jit` with `apply_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sqzexplore.models.spec import FIRE_ROLES, LayerPlan, conv_block_role, conv_order_key

# ---------------------------------------------------------------------- parameter paths


def _as_tree(params: Any) -> Any:
    # nnx.State (and anything else with the same method) -> nested dict of arrays.
    to_pure_dict = getattr(params, "to_pure_dict", None)
    return to_pure_dict() if callable(to_pure_dict) else params


def network_order_key(path: str) -> tuple:
    """Sort key putting paths in the layer plan's order: conv1, fire2 ... fireN (squeeze,
    expand1x1, expand3x3, bypass), conv10, then anything else alphabetically
    (`spec.conv_order_key`, which owns the plan's layer names)."""
    return conv_order_key(path)


def flatten_params(params: Any) -> dict[str, Any]:
    """`{"fire2/squeeze/kernel": array, ...}` in network order, from a nested dict, an
    `nnx.State`, or an already flat dict (keys containing '/')."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                visit(f"{prefix}/{key}" if prefix else str(key), child)
        else:
            if prefix in flat:
                raise ValueError(f"parameter path {prefix!r} appears twice")
            flat[prefix] = node

    visit("", _as_tree(params))
    return {path: flat[path] for path in sorted(flat, key=network_order_key)}


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict from a flat `{"a/b/c": leaf}` dict (inverse of `flatten_params`)."""
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        keys = path.split("/")
        node = tree
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ValueError(f"parameter path {path!r} runs through the leaf {key!r}")
            node = child
        if keys[-1] in node:
            raise ValueError(f"parameter path {path!r} appears twice")
        node[keys[-1]] = leaf
    return tree


def merge_params(params: Any, updates: Any) -> dict[str, Any]:
    """`params` (nested dict) with the leaves of `updates` replacing those at the same paths,
    e.g. kernels rebuilt by `quantize.kernels_from_codebooks`; works on traced arrays."""
    flat = flatten_params(params)
    for path, leaf in flatten_params(updates).items():
        if path not in flat:
            raise ValueError(f"update for {path!r} has no matching parameter")
        flat[path] = leaf
    return unflatten_params(flat)


def is_conv_kernel(path: str, leaf: Any) -> bool:
    """Whether a parameter is a conv kernel (prunable and quantizable): `.../kernel`, HWIO."""
    return path.rsplit("/", 1)[-1] == "kernel" and np.ndim(leaf) == 4


def conv_kernels(params: Any) -> dict[str, Any]:
    """The conv kernels of a parameter tree, flat and in network order."""
    return {p: leaf for p, leaf in flatten_params(params).items() if is_conv_kernel(p, leaf)}


def layer_name(kernel_path: str) -> str:
    """`"fire2/squeeze/kernel"` -> `"fire2/squeeze"`."""
    return kernel_path.removesuffix("/kernel")


def per_layer(kernel_paths: list[str], values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """`{kernel path: value}` from a mapping keyed by layer (`"fire2/squeeze"`) or kernel path
    (`"fire2/squeeze/kernel"`); a name that is no conv layer, or one layer named twice, is an
    error naming `what`."""
    by_layer = {layer_name(p): p for p in kernel_paths}
    out: dict[str, Any] = {}
    for key, value in values.items():
        layer = layer_name(str(key))
        if layer not in by_layer:
            raise ValueError(
                f"{what} names layer {key!r}, which is not a conv layer of these params; "
                f"conv layers: {', '.join(by_layer)}"
            )
        if by_layer[layer] in out:
            raise ValueError(f"{what} names layer {layer!r} twice")
        out[by_layer[layer]] = value
    return out


# ---------------------------------------------------------------------- released densities

# Per-layer densities of the released compressed SqueezeNet v1.0 (paper Table 2's 8-bit model).
RELEASED_CONV1_DENSITY = 0.985
RELEASED_CONV10_DENSITY = 0.207
# fire2 ... fire9: (squeeze, expand1x1, expand3x3).
RELEASED_FIRE_DENSITIES: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 0.33),
    (1.0, 1.0, 0.33),
    (1.0, 1.0, 0.33),
    (1.0, 1.0, 0.33),
    (0.99, 0.5, 0.33),
    (0.5, 0.99, 0.33),
    (0.99, 0.5, 0.30),
    (0.5, 0.99, 0.30),
)


def released_density(layer: str, num_fire: int) -> float:
    """The released SqueezeNet's density for `layer` in a net with `num_fire` Fire modules.

    Fire module i of `num_fire` (fire2 is i = 0) takes the densities of the paper Fire module at
    the same relative depth, `round(i * 7 / (num_fire - 1))`, which is i itself for v1.0/v1.1.
    """
    block, role = conv_block_role(layer_name(layer))
    if role is None:
        raise ValueError(
            f"no released density for layer {layer!r} (known: conv1, fireN/squeeze, "
            "fireN/expand1x1, fireN/expand3x3, fireN/bypass, conv10); pass densities explicitly"
        )
    index = int(block.removeprefix("fire")) - 2 if block.startswith("fire") else 0
    if role in FIRE_ROLES and not 0 <= index < max(num_fire, 1):
        raise ValueError(f"layer {layer!r} is outside a net of {num_fire} Fire modules")
    return _released(role, index, num_fire)


def released_densities(plan: LayerPlan) -> dict[str, float]:
    """`{kernel path: density}` of the released SqueezeNet mapped onto a layer plan: each conv by
    its role, each Fire block by its depth among the plan's Fire blocks."""
    fires = plan.fire_blocks
    return {
        f"{c.name}/kernel": _released(
            c.role, fires.index(c.block) if c.block in fires else 0, len(fires)
        )
        for c in plan.convs
    }


def _released(role: str, fire_index: int, num_fire: int) -> float:
    if role == "conv1":
        return RELEASED_CONV1_DENSITY
    if role == "classifier":
        return RELEASED_CONV10_DENSITY
    paper_fires = len(RELEASED_FIRE_DENSITIES)
    paper_index = round(fire_index * (paper_fires - 1) / (num_fire - 1)) if num_fire > 1 else 0
    squeeze, expand1x1, expand3x3 = RELEASED_FIRE_DENSITIES[paper_index]
    # A bypass conv feeds the same Fire output as the squeeze reads; the paper prunes no bypass
    # convs, so it inherits its Fire module's squeeze density.
    return {"squeeze": squeeze, "bypass": squeeze, "expand1x1": expand1x1, "expand3x3": expand3x3}[
        role
    ]


def _check_density(layer: str, density: Any) -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float, np.floating)):
        raise ValueError(f"density of layer {layer!r} must be a number in (0, 1], got {density!r}")
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density of layer {layer!r} must be in (0, 1], got {density}")
    return density


def check_against_plan(params: Any, plan: LayerPlan) -> None:
    """Refuse a parameter tree whose conv kernels are not exactly the plan's (names and HWIO
    shapes), naming the first difference."""
    kernels = conv_kernels(params)
    expected = {f"{c.name}/kernel": c.kernel_shape for c in plan.convs}
    if list(kernels) != list(expected):
        raise ValueError(
            f"the parameters' conv kernels ({', '.join(kernels)}) are not the layer plan's "
            f"({', '.join(expected)})"
        )
    for path, shape in expected.items():
        if tuple(np.shape(kernels[path])) != shape:
            raise ValueError(
                f"{path} has shape {tuple(np.shape(kernels[path]))}, the layer plan's is {shape}"
            )


def resolve_densities(
    params: Any, densities: Any = "released", plan: LayerPlan | None = None
) -> dict[str, float]:
    """Density per conv kernel path (`{"fire2/squeeze/kernel": 1.0, ...}`), validated.

    `densities` is "released", one number for all kernels, or a mapping keyed by layer name or
    kernel path (unnamed layers stay at 1.0; unknown names are an error). With the model's layer
    `plan`, the params are checked against it and the released densities follow its roles and
    Fire depth; without, they follow the plan's layer names (`spec.conv_block_role`).
    """
    kernels = conv_kernels(params)
    paths = list(kernels)
    if plan is not None:
        check_against_plan(params, plan)
    if isinstance(densities, str):
        if densities != "released":
            raise ValueError(
                f"densities must be 'released', a number in (0, 1] or a per-layer mapping, "
                f"got {densities!r}"
            )
        if plan is not None:
            return released_densities(plan)
        roles = [conv_block_role(layer_name(p)) for p in paths]
        num_fire = len({block for block, role in roles if role in FIRE_ROLES})
        return {p: released_density(p, num_fire) for p in paths}
    if isinstance(densities, Mapping):
        named = per_layer(paths, densities, "densities")
        return {p: _check_density(layer_name(p), named.get(p, 1.0)) for p in paths}
    return {p: _check_density(layer_name(p), densities) for p in paths}


# ---------------------------------------------------------------------- masks


def kept_count(density: float, size: int) -> int:
    """Weights kept at `density` out of `size`: round half up, at least one."""
    return max(1, min(size, math.floor(density * size + 0.5)))


def magnitude_mask(kernel: Any, density: float, within: Any | None = None) -> np.ndarray:
    """Boolean mask keeping the `kept_count(density, n)` largest-|w| entries of `kernel`.

    Ties in |w| keep the entry with the lower flat C-order index. With `within` (a boolean mask
    of the same shape, e.g. the previous round's in iterative pruning) only its entries are
    candidates, so the new mask is a subset of it even where a surviving weight is exactly zero;
    the count is capped at `within.sum()`.
    """
    weights = np.asarray(kernel, dtype=np.float32)
    if not np.all(np.isfinite(weights)):
        raise ValueError("cannot prune a kernel with NaN or infinite weights")
    flat = np.abs(weights).ravel()
    keep = kept_count(density, flat.size)
    if within is not None:
        within = np.asarray(within, dtype=bool)
        if within.shape != weights.shape:
            raise ValueError(f"within has shape {within.shape}, kernel has {weights.shape}")
        # Magnitudes are >= 0, so -1 ranks every excluded entry after every candidate.
        flat = np.where(within.ravel(), flat, np.float32(-1.0))
        keep = min(keep, int(within.sum()))
    # A stable sort of -|w| ranks equal magnitudes by position: deterministic everywhere.
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:keep]] = True
    return mask.reshape(weights.shape)


def make_masks(
    params: Any, densities: Any = "released", within: Any | None = None
) -> dict[str, Any]:
    """Nested dict of boolean masks, one per conv kernel, mirroring `params` (see module doc).

    `within` (a mask tree, nested or flat) restricts each kernel's mask to a subset of the given
    one (iterative pruning); kernels it does not name are unrestricted.
    """
    kernels = conv_kernels(params)
    resolved = resolve_densities(kernels, densities)
    previous = flatten_params(within) if within is not None else {}
    unknown = sorted(set(previous) - set(kernels))
    if unknown:
        raise ValueError(f"within names {unknown}, which are not conv kernels of the params")
    return unflatten_params(
        {p: magnitude_mask(kernels[p], resolved[p], previous.get(p)) for p in kernels}
    )


def apply_masks(params: Any, masks: Any) -> dict[str, Any]:
    """`params` with every masked kernel's pruned weights set to zero (nested dict).

    NumPy leaves stay NumPy; jax arrays and tracers go through `jnp.where`, so this works inside
    `jax.jit` with the masks as (static or traced) arrays.
    """
    flat = flatten_params(params)
    flat_masks = flatten_params(masks)
    for path, mask in flat_masks.items():
        if path not in flat:
            raise ValueError(f"mask for {path!r} has no matching parameter")
        leaf = flat[path]
        if tuple(np.shape(mask)) != tuple(np.shape(leaf)):
            raise ValueError(
                f"mask for {path!r} has shape {tuple(np.shape(mask))}, parameter has "
                f"{tuple(np.shape(leaf))}"
            )
        if isinstance(leaf, np.ndarray) and isinstance(mask, np.ndarray):
            flat[path] = np.where(mask, leaf, np.zeros((), leaf.dtype))
        else:
            flat[path] = jnp.where(mask, leaf, jnp.zeros((), jnp.result_type(leaf)))
    return unflatten_params(flat)


def density_report(masks: Any) -> dict[str, Any]:
    """`{"layers": {layer: {"params", "kept", "density"}}, "total": {...}}` in network order."""
    layers = {}
    total_params = total_kept = 0
    for path, mask in flatten_params(masks).items():
        mask = np.asarray(jax.device_get(mask), dtype=bool)
        params, kept = int(mask.size), int(mask.sum())
        layers[layer_name(path)] = {"params": params, "kept": kept, "density": kept / params}
        total_params += params
        total_kept += kept
    total = {
        "params": total_params,
        "kept": total_kept,
        "density": total_kept / total_params if total_params else 0.0,
    }
    return {"layers": layers, "total": total}
