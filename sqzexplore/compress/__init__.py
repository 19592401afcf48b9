"""Deep Compression of SqueezeNet weights: prune -> quantize -> encode into a .sqz file.

Stages (Han et al., "Deep Compression", as applied in the SqueezeNet paper's Table 2):

1. `prune`: magnitude pruning of conv kernels to per-layer densities (the released SqueezeNet's
   by default), as boolean masks the trainer keeps applied while it retrains.
2. `quantize`: per-layer k-means weight sharing of the surviving weights (2^b linearly initialised
   centroids), with `kernels_from_codebooks` for fine-tuning the centroids by gradient descent.
3. the `.sqz` file (`sqzformat`: the layout; `coding`: bit packing, Huffman and gap streams;
   `encode` / `decode`: writer and checked reader; `size`: its accounting against fp32).

`plan` holds the settings (`CompressPlan`), `runs` the source run and output directory, `stages`
the retraining runs and `pipeline` the whole of `sqz compress` (`cli`).

Everything here works on plain parameter trees (nested dicts, `nnx.State.to_pure_dict()`), so the
retraining loop and the `sqz compress` command can call it directly. The names below are imported
on first use, so `sqz compress --help` and its argument checks do not wait for jax.
"""

import importlib

_EXPORTS = {
    "sqzformat": ("FORMAT_VERSION", "SqzFormatError"),
    "decode": ("SqzFile", "decode_sqz", "parse_sqz", "read_sqz"),
    "encode": ("encode_sqz", "write_sqz"),
    "size": ("format_size_table", "size_report"),
    "plan": ("CompressError", "CompressPlan", "StagePlan"),
    "prune": (
        "apply_masks",
        "conv_kernels",
        "density_report",
        "flatten_params",
        "make_masks",
        "merge_params",
        "released_density",
        "resolve_densities",
        "unflatten_params",
    ),
    "quantize": (
        "QuantizedLayer",
        "codebooks_and_aux",
        "dequantize",
        "kernels_from_codebooks",
        "kmeans_1d",
        "quantize_params",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_MODULE_OF)
