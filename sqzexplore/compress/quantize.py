"""Trained quantization by k-means weight sharing, stage 2 of Deep Compression.

Each conv kernel's SURVIVING weights (those its pruning mask keeps) are clustered into 2^b shared
values with one-dimensional k-means (Lloyd's algorithm). As the Deep Compression paper found works
best, centroids start LINEARLY spaced between the smallest and largest surviving weight, which
keeps a few centroids out at the rare large weights. On a pruned layer the centroids that start
deep inside the pruned band (-t, t) never attract a weight and stay unused, so fewer than 2^b codes
occur; Huffman coding (`encode.py`) recovers those bits. Iterations run until no weight changes
cluster (exact Lloyd convergence) or `max_iter`; an empty cluster keeps its previous centroid.
The paper used 8-bit codes for conv layers; SqueezeNet compresses to the paper's 0.66MB with
8-bit codes and 0.47MB with 6-bit codes (docs/paper.md).

In one dimension the clusters of sorted centroids are intervals between neighbouring centroid
midpoints, so one iteration is `searchsorted` of the 2^b - 1 midpoints in the sorted weights plus
prefix sums: O(2^b log n), whatever the layer size. Ties (a weight exactly on a midpoint) go to the
lower centroid. The codebook is the float32 centroid list in ascending order; the codes are the
cluster index of each surviving weight in flat C-order position order.

For centroid fine-tuning the trainer reparametrises each kernel as
`where(mask, codebook[codes_full], 0)` (`kernels_from_codebooks`): differentiating a loss through
it gives each centroid the sum of the gradients of the weights that share it, as in the paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from sqzexplore.compress.prune import (
    conv_kernels,
    flatten_params,
    layer_name,
    per_layer,
    unflatten_params,
)
from sqzexplore.compress.sqzformat import MAX_BITS, MIN_BITS


def check_bits(layer: str, bits: Any) -> int:
    """Validate code width `bits` for `layer`; returns it as int."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(
            f"bits of layer {layer!r} must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}"
        )
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise ValueError(f"bits of layer {layer!r} must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return int(bits)


@dataclasses.dataclass(frozen=True, eq=False)
class KMeansResult:
    """1-D k-means outcome: float32 centroids (ascending), per-value codes, iterations run."""

    centroids: np.ndarray
    codes: np.ndarray
    iterations: int
    converged: bool


def kmeans_1d(values: Any, num_clusters: int, *, max_iter: int = 1000) -> KMeansResult:
    """Lloyd's k-means of 1-D `values` with linear initialisation (see the module docstring).

    Returns centroids (float32, ascending, `num_clusters` of them) and for every value the index
    of its cluster (int64, the order of `values`). Deterministic.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("k-means needs at least one value")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot cluster NaN or infinite weights")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    centroids = np.linspace(xs[0], xs[-1], num_clusters)
    cuts = None
    converged = False
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        # Values <= a midpoint belong to the lower centroid (side='right' counts them).
        new_cuts = np.searchsorted(xs, (centroids[:-1] + centroids[1:]) / 2, side="right")
        if cuts is not None and np.array_equal(new_cuts, cuts):
            converged = True
            break
        cuts = new_cuts
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [xs.size]])
        counts = ends - starts
        sums = prefix[ends] - prefix[starts]
        # An empty cluster keeps its centroid; a non-empty one moves to the mean of its values.
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    starts = np.concatenate([[0], cuts])
    counts = np.diff(np.concatenate([starts, [xs.size]]))
    codes = np.empty(x.size, dtype=np.int64)
    codes[order] = np.repeat(np.arange(num_clusters), counts)
    return KMeansResult(centroids.astype(np.float32), codes, iterations, converged)


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedLayer:
    """One k-means-quantized conv kernel.

    `name` is the kernel path ("fire2/squeeze/kernel"); `codebook` float32 [2^bits];
    `codes` uint8 [surviving], the code of each surviving weight in flat C-order position order;
    `mask` bool, the kernel's shape. The kernel is `where(mask, codebook[codes_full], 0)`.
    """

    name: str
    bits: int
    codebook: np.ndarray
    codes: np.ndarray
    mask: np.ndarray

    def __post_init__(self):
        check_bits(self.name, self.bits)
        codebook = np.asarray(self.codebook, dtype=np.float32)
        codes = np.asarray(self.codes)
        mask = np.asarray(self.mask, dtype=bool)
        if codebook.shape != (2**self.bits,):
            raise ValueError(
                f"codebook of {self.name!r} must have 2^bits = {2**self.bits} entries, got shape "
                f"{codebook.shape}"
            )
        if codes.ndim != 1 or codes.size != int(mask.sum()):
            raise ValueError(
                f"{self.name!r} has {codes.size} codes for {int(mask.sum())} surviving weights"
            )
        if codes.size and (codes.min() < 0 or codes.max() >= 2**self.bits):
            raise ValueError(
                f"codes of {self.name!r} must be in [0, {2**self.bits - 1}] for {self.bits} bits, "
                f"got range [{codes.min()}, {codes.max()}]"
            )
        object.__setattr__(self, "codebook", codebook)
        object.__setattr__(self, "codes", codes.astype(np.uint8))
        object.__setattr__(self, "mask", mask)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def num_surviving(self) -> int:
        return int(self.codes.size)

    @property
    def codes_full(self) -> np.ndarray:
        """int32 array of the kernel's shape: codes at surviving positions, 0 elsewhere."""
        full = np.zeros(self.mask.size, dtype=np.int32)
        full[np.flatnonzero(self.mask)] = self.codes
        return full.reshape(self.mask.shape)

    def dequantize(self) -> np.ndarray:
        """The float32 kernel: `codebook[code]` at surviving positions, exact zeros elsewhere."""
        kernel = np.zeros(self.mask.size, dtype=np.float32)
        kernel[np.flatnonzero(self.mask)] = self.codebook[self.codes]
        return kernel.reshape(self.mask.shape)

    def with_codebook(self, codebook: Any) -> QuantizedLayer:
        """The same layer with a new (e.g. fine-tuned) codebook."""
        return dataclasses.replace(self, codebook=np.asarray(codebook, dtype=np.float32))


def quantize_kernel(
    name: str, kernel: Any, mask: Any | None, bits: int, *, max_iter: int = 1000
) -> QuantizedLayer:
    """k-means-quantize the surviving weights of one kernel (all of them when `mask` is None)."""
    bits = check_bits(layer_name(name), bits)
    weights = np.asarray(kernel, dtype=np.float32)
    mask = np.ones(weights.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != weights.shape:
        raise ValueError(f"mask of {name!r} has shape {mask.shape}, kernel has {weights.shape}")
    surviving = weights.ravel()[np.flatnonzero(mask)]
    if surviving.size == 0:
        raise ValueError(f"layer {layer_name(name)!r} has no surviving weights to quantize")
    result = kmeans_1d(surviving, 2**bits, max_iter=max_iter)
    return QuantizedLayer(name, bits, result.centroids, result.codes, mask)


def resolve_bits(kernel_paths: list[str], bits: int | Mapping[str, int]) -> dict[str, int]:
    """Bits per kernel path from one number or a mapping keyed by layer or kernel path.

    A mapping must name every layer (a "default" key covers the unnamed ones).
    """
    if not isinstance(bits, Mapping):
        return {p: check_bits(layer_name(p), bits) for p in kernel_paths}
    named = per_layer(kernel_paths, {k: v for k, v in bits.items() if k != "default"}, "bits")
    for path in kernel_paths:
        if path not in named and "default" not in bits:
            raise ValueError(
                f"bits has no entry for layer {layer_name(path)!r}; name it or add 'default'"
            )
    return {p: check_bits(layer_name(p), named.get(p, bits.get("default"))) for p in kernel_paths}


def quantize_params(
    params: Any,
    masks: Any | None = None,
    bits: int | Mapping[str, int] = 8,
    *,
    max_iter: int = 1000,
) -> dict[str, QuantizedLayer]:
    """Quantize every conv kernel of `params` (under its mask, if given), keyed by kernel path.

    `masks` is the nested (or flat) mask tree from `prune.make_masks`; a kernel without a mask is
    quantized whole. Pruned weights need not be zero in `params`: only masked-in ones are read.
    """
    kernels = conv_kernels(params)
    flat_masks = flatten_params(masks) if masks is not None else {}
    unknown = sorted(set(flat_masks) - set(kernels))
    if unknown:
        raise ValueError(f"masks given for {unknown}, which are not conv kernels of the params")
    per_layer_bits = resolve_bits(list(kernels), bits)
    return {
        path: quantize_kernel(
            path, kernel, flat_masks.get(path), per_layer_bits[path], max_iter=max_iter
        )
        for path, kernel in kernels.items()
    }


def dequantize(layers: Mapping[str, QuantizedLayer]) -> dict[str, Any]:
    """Nested dict of float32 NumPy kernels rebuilt from quantized layers (exact)."""
    return unflatten_params({path: layer.dequantize() for path, layer in layers.items()})


# ---------------------------------------------------------------------- centroid fine-tuning


def codebooks_and_aux(
    layers: Mapping[str, QuantizedLayer],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split quantized layers into the trainable part and the fixed part for fine-tuning.

    Returns `(codebooks, aux)`, nested dicts mirroring the parameter tree (no '/' in any key, so
    checkpointers take them as they are): `codebooks` holds float32 [2^b] arrays at the kernel
    paths (differentiate these); `aux = {"codes_full": ..., "mask": ...}` holds the int32 codes and
    bool masks, kernel-shaped, at the same paths (constants).
    """
    codebooks = unflatten_params({path: layer.codebook for path, layer in layers.items()})
    aux = {
        "codes_full": unflatten_params({p: layer.codes_full for p, layer in layers.items()}),
        "mask": unflatten_params({p: layer.mask for p, layer in layers.items()}),
    }
    return codebooks, aux


def kernels_from_codebooks(codebooks: Any, aux: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict of kernels `where(mask, codebook[codes_full], 0)`; pure and jit-friendly.

    `codebooks` and `aux` are as `codebooks_and_aux` returns them (nested or flat). The gradient
    w.r.t. each codebook entry is the sum of the gradients of the weights sharing it. Merge the
    result over the parameter tree (`prune.merge_params`) before the forward pass.
    """
    flat_codes = flatten_params(aux["codes_full"])
    flat_masks = flatten_params(aux["mask"])
    kernels = {}
    for path, codebook in flatten_params(codebooks).items():
        if path not in flat_codes or path not in flat_masks:
            raise ValueError(f"codebook {path!r} has no codes_full/mask in aux")
        shared = jnp.take(codebook, flat_codes[path], axis=0)
        kernels[path] = jnp.where(flat_masks[path], shared, jnp.zeros((), shared.dtype))
    return unflatten_params(kernels)
