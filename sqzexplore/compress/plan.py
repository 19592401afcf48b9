"""What to compress and how: one `CompressPlan`, built once (from `sqz compress`'s arguments or in
code) and passed to every stage, and `CompressError`, the error naming the setting at fault.

A plan is checked when it is made, against everything but the model (ranges, forms); `for_model`
then resolves it against a model's conv layers: bits and densities per kernel path, stage lengths
from the source run's epochs. It imports nothing heavy, so bad arguments and `--help` answer at
once, before jax loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from sqzexplore.compress.sqzformat import MAX_BITS, MAX_GAP_BITS, MIN_BITS, MIN_GAP_BITS
from sqzexplore.models.spec import LayerPlan

MAX_ROUNDS = 10
MAX_EPOCHS = 1e6
# Learning rates as fractions of the source run's. Retraining after pruning needs a real step
# size: on the digits experiment 0.1x left the pruned net 1.1 points down after 5 epochs, 0.3x
# recovered it fully; the centroids start close to a good solution and need less.
DEFAULT_LR_SCALE = 0.3
DEFAULT_FINETUNE_LR_SCALE = 0.1
# Default stage lengths as fractions of the source run's epochs (at least one epoch each).
DEFAULT_RETRAIN_FRACTION = 0.25
DEFAULT_FINETUNE_FRACTION = 0.1

Bits = int | Mapping[str, int]
Density = str | float | Mapping[str, float]


class CompressError(ValueError):
    """Unusable `sqz compress` input; `field` is the argument at fault ("bits", "density", ...)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_integer(field: str, value: Any, low: int, high: int) -> int:
    """`value` as an int in [low, high], else CompressError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int) and not _is_numpy_int(value):
        raise CompressError(field, f"must be an integer in [{low}, {high}], got {value!r}")
    if not low <= int(value) <= high:
        raise CompressError(field, f"must be in [{low}, {high}], got {value}")
    return int(value)


def check_number(field: str, value: Any, low: float, high: float, *, low_open: bool) -> float:
    """`value` as a finite float in [low, high] (or (low, high]), else CompressError."""
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, (bool, str)) or not math.isfinite(number):
        raise CompressError(field, f"must be a number in {bounds}, got {value!r}")
    if number > high or number < low or (low_open and number == low):
        raise CompressError(field, f"must be in {bounds}, got {number:g}")
    return number


def _is_numpy_int(value: Any) -> bool:
    return (
        type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu"
    )


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One training stage on the source run's config (masked retraining after each pruning round,
    or centroid fine-tuning): `epochs` epochs (None: `default_fraction` of the source run's, at
    least one; 0 skips the stage) at the source learning rate x `lr_scale`."""

    epochs: float | None
    lr_scale: float
    default_fraction: float
    epochs_field: str  # the setting's name in errors and in compress.json
    lr_field: str

    def __post_init__(self):
        if self.epochs is not None:
            epochs = check_number(self.epochs_field, self.epochs, 0, MAX_EPOCHS, low_open=False)
            object.__setattr__(self, "epochs", epochs)
        lr_scale = check_number(self.lr_field, self.lr_scale, 0, 1, low_open=True)
        object.__setattr__(self, "lr_scale", lr_scale)

    @classmethod
    def retrain(cls, epochs: float | None = None, lr_scale: float = DEFAULT_LR_SCALE) -> StagePlan:
        return cls(epochs, lr_scale, DEFAULT_RETRAIN_FRACTION, "retrain_epochs", "lr_scale")

    @classmethod
    def finetune(
        cls, epochs: float | None = None, lr_scale: float = DEFAULT_FINETUNE_LR_SCALE
    ) -> StagePlan:
        return cls(
            epochs, lr_scale, DEFAULT_FINETUNE_FRACTION, "finetune_epochs", "finetune_lr_scale"
        )

    def for_source(self, source_epochs: float) -> StagePlan:
        """This stage with its default length worked out from the source run's epochs."""
        if self.epochs is not None:
            return self
        return dataclasses.replace(self, epochs=max(1.0, self.default_fraction * source_epochs))

    def config(self, source_config: Any) -> Any:
        """The source run's config for this stage: its epochs, lr x lr_scale, no warmup, one
        evaluation at the end, wandb off (the stage is not a new design point)."""
        import ml_collections

        if self.epochs is None:
            raise ValueError("resolve the stage's epochs first (for_source)")
        d = json.loads(source_config.to_json_best_effort())
        d["num_steps"] = 0
        d["num_epochs"] = float(self.epochs)
        d["optim"]["lr"] = float(d["optim"]["lr"]) * self.lr_scale
        d["optim"]["warmup_epochs"] = 0.0
        d["eval_every_epochs"] = float(self.epochs)
        d["checkpoint_every_epochs"] = min(float(d["checkpoint_every_epochs"]), float(self.epochs))
        d["wandb"]["mode"] = "disabled"
        return ml_collections.ConfigDict(d)


def _layer_suffix(key: str | None) -> str:
    return f" (layer {key})" if key not in (None, "default") else ""


def _each(value: Any, check: Any) -> Any:
    """`check(value)`, or of each value of a per-layer mapping (errors name the layer)."""
    if not isinstance(value, Mapping):
        return check(value)
    out = {}
    for key, item in value.items():
        try:
            out[str(key)] = check(item)
        except CompressError as err:
            raise CompressError(err.field, err.message + _layer_suffix(str(key))) from None
    return out


@dataclasses.dataclass(frozen=True)
class CompressPlan:
    """Deep Compression settings.

    `bits`: code width in [2, 8], one for all conv layers or per layer (a mapping keyed by layer
    or kernel path, "default" for the unnamed). `density`: fraction of conv weights kept, in
    (0, 1]: "released" (the released SqueezeNet's per layer), one number, or per layer (unnamed
    layers stay dense). `huffman`: Huffman-code codes and gaps where smaller. `gap_bits`: relative
    index width. `rounds`: prune-retrain rounds, the densities stepping down geometrically.
    `retrain` / `finetune`: the two training stages. After `for_model`, `bits` and `density` are
    complete `{kernel path: value}` dicts and the stages' epochs are numbers.
    """

    bits: Bits
    density: Density = "released"
    huffman: bool = False
    gap_bits: int = 4
    rounds: int = 1
    retrain: StagePlan = StagePlan.retrain()
    finetune: StagePlan = StagePlan.finetune()

    def __post_init__(self):
        bits = _each(self.bits, lambda v: check_integer("bits", v, MIN_BITS, MAX_BITS))
        if isinstance(self.density, str) and self.density != "released":
            raise CompressError(
                "density",
                f"must be 'released', a number or layer=density pairs, got {self.density!r}",
            )
        density = self.density
        if not isinstance(density, str):
            density = _each(density, lambda v: check_number("density", v, 0, 1, low_open=True))
        if self.huffman not in (False, True):
            raise CompressError("huffman", f"must be True or False, got {self.huffman!r}")
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "density", density)
        object.__setattr__(self, "huffman", bool(self.huffman))
        object.__setattr__(
            self, "gap_bits", check_integer("gap_bits", self.gap_bits, MIN_GAP_BITS, MAX_GAP_BITS)
        )
        object.__setattr__(self, "rounds", check_integer("rounds", self.rounds, 1, MAX_ROUNDS))

    def for_model(
        self, params: Any, source_epochs: float = 0.0, layers: LayerPlan | None = None
    ) -> CompressPlan:
        """This plan resolved against a model's conv layers (`params`: any tree with the model's
        parameter paths, e.g. `runs.model_trees(spec)[0]`; `layers`: the spec's layer plan, which
        the params are checked against and the released densities follow); layer names it does
        not know are a CompressError. Nothing is loaded or compiled."""
        from sqzexplore.compress.prune import conv_kernels, resolve_densities
        from sqzexplore.compress.quantize import resolve_bits

        kernels = list(conv_kernels(params))
        try:
            bits = resolve_bits(kernels, self.bits)
        except ValueError as err:
            raise CompressError("bits", str(err)) from None
        try:
            density = resolve_densities(params, self.density, layers)
        except ValueError as err:
            raise CompressError("density", str(err)) from None
        return dataclasses.replace(
            self,
            bits=bits,
            density=density,
            retrain=self.retrain.for_source(source_epochs),
            finetune=self.finetune.for_source(source_epochs),
        )

    def round_densities(self, k: int) -> dict[str, float]:
        """Densities after pruning round k of `rounds` (of a resolved plan): d^(k/rounds), so each
        round removes the same fraction of the remaining weights and the last reaches d."""
        if not isinstance(self.density, Mapping):
            raise ValueError("resolve the plan against the model first (for_model)")
        return {p: d ** (k / self.rounds) for p, d in self.density.items()}

    def settings(self) -> dict[str, Any]:
        """The settings by layer name (of a resolved plan), as the report shows them."""
        if not isinstance(self.density, Mapping) or not isinstance(self.bits, Mapping):
            raise ValueError("resolve the plan against the model first (for_model)")
        return {
            "densities": {p.removesuffix("/kernel"): d for p, d in self.density.items()},
            "bits": {p.removesuffix("/kernel"): b for p, b in self.bits.items()},
            "rounds": self.rounds,
            self.retrain.epochs_field: self.retrain.epochs,
            self.finetune.epochs_field: self.finetune.epochs,
            self.retrain.lr_field: self.retrain.lr_scale,
            self.finetune.lr_field: self.finetune.lr_scale,
            "gap_bits": self.gap_bits,
            "huffman": self.huffman,
        }

    def training_settings(self) -> dict[str, Any]:
        """What the retraining and fine-tuning stages depend on (compress.json pins them): all
        settings but the encoding's."""
        settings = self.settings()
        del settings["gap_bits"], settings["huffman"]
        return settings


# ---------------------------------------------------------------------- argument text


def _items(field: str, text: str) -> list[tuple[str | None, str]]:
    items = []
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            continue
        key, sep, value = raw.rpartition("=")
        items.append((key.strip() if sep else None, value.strip()))
    if not items:
        raise CompressError(field, "is empty")
    keys = [k for k, _ in items]
    duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicates:
        raise CompressError(field, f"names {', '.join(duplicates)} more than once")
    return items


def parse_bits(text: str) -> Bits:
    """`"6"` -> 6; `"6,conv10=4"` or `"default=6,conv10=4"` -> per-layer mapping (ranges are the
    plan's to check)."""
    out: dict[str, int] = {}
    for key, value in _items("bits", text):
        try:
            out["default" if key is None else key] = int(value)
        except ValueError:
            raise CompressError(
                "bits",
                f"{value!r}{_layer_suffix(key)} is not an integer in [{MIN_BITS}, {MAX_BITS}]",
            ) from None
    return out["default"] if list(out) == ["default"] else out


def parse_density(text: str) -> Density:
    """`"released"`, one number, or `"layer=d,..."` (ranges are the plan's to check)."""
    if text.strip() == "released":
        return "released"
    items = _items("density", text)
    if len(items) > 1 and any(key is None for key, _ in items):
        raise CompressError(
            "density", "give one number, or layer=density pairs only (layers not named stay dense)"
        )
    out: dict[str, float] = {}
    for key, value in items:
        try:
            number = float(value)
        except ValueError:
            raise CompressError(
                "density",
                f"{value!r}{_layer_suffix(key)} is not a number in (0, 1] (or 'released')",
            ) from None
        if key is None:
            return number
        out[key] = number
    return out
