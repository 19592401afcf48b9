"""The benchmarks of the repository, kept outside the importable `sqzexplore` library.

`sqz bench` finds this directory from the working directory (or `--benchmarks-dir`, or
`SQZ_BENCHMARKS_DIR`), loads it as the package `benchmarks` and runs `benchmarks.cli.main`.
One module per benchmark:

- plan.py: the cases one invocation measures (`build_plan`) and the trainer config of each.
- step.py: the public train step, compiled ahead of time and timed on a device-resident batch.
- e2e.py: `train_and_evaluate` against the same step (the input pipeline and the Python loop).
- compile_ahead.py: compiling the next run in a background thread while the current one trains.
- torch_compare.py: torchvision's SqueezeNets on the same device, as ratios to the JAX step.
- maxbatch.py: the largest batch whose step fits on one device.
- profile.py: where a step's time goes, from a JAX profiler trace.
- report.py: the machine, the JSON results and the markdown blocks of RESULTS.md, rendered from
  the `Section` (title, columns, cells) each benchmark module declares for its rows.
- common.py: errors, the timed-window loop, device facts and `Section`, shared by the benchmarks.

Importing this package imports nothing heavy: `sqz bench --help` must not wait for jax.
"""
