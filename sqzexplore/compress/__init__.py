"""Deep Compression of SqueezeNet weights: prune -> quantize -> encode into a .sqz file.

Stages (Han et al., "Deep Compression", as applied in the SqueezeNet paper's Table 2):

1. `prune`: magnitude pruning of conv kernels to per-layer densities (the released SqueezeNet's
   by default), as boolean masks the trainer keeps applied while it retrains.
2. `quantize`: per-layer k-means weight sharing of the surviving weights (2^b linearly initialised
   centroids), with `kernels_from_codebooks` for fine-tuning the centroids by gradient descent.
3. `encode`: the versioned `.sqz` file (sparse relative-index gaps with fillers, b-bit codes,
   optional canonical Huffman coding) and its size accounting against fp32.

Everything here works on plain parameter trees (nested dicts, `nnx.State.to_pure_dict()`), so the
retraining loop and the `sqz compress` command can call it directly.
"""

from sqzexplore.compress.encode import (
    FORMAT_VERSION,
    SqzFormatError,
    decode_sqz,
    encode_sqz,
    format_size_table,
    read_sqz,
    size_report,
    write_sqz,
)
from sqzexplore.compress.prune import (
    apply_masks,
    conv_kernels,
    density_report,
    flatten_params,
    make_masks,
    merge_params,
    released_density,
    resolve_densities,
    unflatten_params,
)
from sqzexplore.compress.quantize import (
    QuantizedLayer,
    codebooks_and_aux,
    dequantize,
    kernels_from_codebooks,
    kmeans_1d,
    quantize_params,
)

__all__ = [
    "FORMAT_VERSION",
    "QuantizedLayer",
    "SqzFormatError",
    "apply_masks",
    "codebooks_and_aux",
    "conv_kernels",
    "decode_sqz",
    "density_report",
    "dequantize",
    "encode_sqz",
    "flatten_params",
    "format_size_table",
    "kernels_from_codebooks",
    "kmeans_1d",
    "make_masks",
    "merge_params",
    "quantize_params",
    "read_sqz",
    "released_density",
    "resolve_densities",
    "size_report",
    "unflatten_params",
    "write_sqz",
]
