"""The training stages of Deep Compression: masked retraining after pruning and centroid
fine-tuning after quantization. Each is an ordinary trainer run (`train_and_evaluate`) on the
source run's config (`StagePlan.config`) with a reparametrisation: the masks, or the codebooks
and codes, live in the checkpointed train state as `aux`, so a stage resumes like any run, and a
finished stage is reused after its `aux` is checked against the one computed now.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sqzexplore import checkpoint, rundir, train
from sqzexplore.compress.plan import CompressError, StagePlan
from sqzexplore.compress.prune import apply_masks, flatten_params, merge_params, unflatten_params
from sqzexplore.compress.quantize import QuantizedLayer, codebooks_and_aux, kernels_from_codebooks
from sqzexplore.compress.runs import FinishedRun, eval_metrics

Log = Callable[[str], None]


class StageInterrupted(RuntimeError):
    """A retraining / fine-tuning run was preempted; rerunning the same command resumes it."""


class MaskedKernels:
    """Trainer reparam for pruned retraining: trainable = the parameters, aux = the masks;
    the model sees every masked kernel with its pruned weights exactly zero.

    `init` zeroes the pruned weights of the incoming parameters, so their gradient (zero through
    `where`) and weight decay (of zero) keep them exactly zero in the checkpointed state too.
    """

    def __init__(self, masks: Any):
        flat = flatten_params(masks)
        self.aux = unflatten_params({p: np.asarray(m, dtype=bool) for p, m in flat.items()})

    def init(self, params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        masks = jax.tree.map(jnp.asarray, self.aux)
        return apply_masks(params, masks), masks

    def apply(self, trainable: Any, aux: Any) -> dict[str, Any]:
        return apply_masks(trainable, aux)


class SharedWeightKernels:
    """Trainer reparam for centroid fine-tuning.

    trainable = the parameter tree with every quantized kernel replaced by its codebook (float32
    [2^b]; 1-D, so the optimiser's kernels-only weight decay leaves it alone); aux = the codes and
    masks (`codebooks_and_aux`). The model sees `where(mask, codebook[codes], 0)`, so each
    centroid's gradient is the sum of the gradients of the weights sharing it.
    """

    def __init__(self, layers: Mapping[str, QuantizedLayer]):
        self.codebooks, self.aux = codebooks_and_aux(layers)

    def init(self, params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        codebooks = jax.tree.map(jnp.asarray, self.codebooks)
        return merge_params(params, codebooks), jax.tree.map(jnp.asarray, self.aux)

    def apply(self, trainable: Any, aux: Mapping[str, Any]) -> dict[str, Any]:
        flat = flatten_params(trainable)
        codebooks = {path: flat[path] for path in flatten_params(aux["mask"])}
        return merge_params(trainable, kernels_from_codebooks(codebooks, aux))


def _check_equal_trees(found: Any, expected: Any, what: str) -> None:
    found, expected = flatten_params(found), flatten_params(expected)
    if found.keys() != expected.keys() or any(
        not np.array_equal(np.asarray(found[p]), np.asarray(expected[p])) for p in expected
    ):
        raise CompressError(
            "out", f"{what} differ from the ones computed now; delete that run and rerun"
        )


def run_stage(
    label: str,
    stage: StagePlan,
    source: FinishedRun,
    workdir: str,
    reparam: MaskedKernels | SharedWeightKernels,
    params: Any,
    batch_stats: Any,
    log: Log,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (or reuse the finished) stage run in `workdir` from `params` and `batch_stats`.

    Returns `(the stage run's weights as checkpoint.load_run gives them, {"workdir", "final"})`.
    Raises StageInterrupted if it was preempted, CompressError if a finished one holds another
    aux than `reparam`'s.
    """
    config = stage.config(source.config)
    resumed = rundir.read_result(workdir) is not None
    log(
        f"{label}: {'reusing the finished run in' if resumed else 'training'} {workdir} "
        f"({config.num_epochs:.3g} epochs, lr {config.optim.lr:.3g})"
    )
    result = train.train_and_evaluate(
        config,
        workdir,
        reparam=reparam,
        init_params={"params": params, "batch_stats": batch_stats},
    )
    if result.get("status") != "complete":
        raise StageInterrupted(
            f"{label} in {workdir} stopped with status {result.get('status')!r}; rerun the same "
            "command to resume it"
        )
    final = eval_metrics(result["final"])
    log(f"{label}: done, top1 {final['top1']:.4f}")
    trained = checkpoint.load_run(workdir)
    _check_equal_trees(trained["aux"], reparam.aux, f"the aux (masks, codes) in {workdir}")
    return trained, {"workdir": workdir, "final": final}
