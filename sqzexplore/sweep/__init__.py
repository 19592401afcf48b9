"""Sweeps: map the accuracy-vs-size (and -vs-compute) frontier of the SqueezeNet design space.

A sweep (`sweeps/<name>.py`, see `space.py`) is a typed `SweepDefinition`: a base experiment, a
search space over config fields, objectives and a budget. `sqz sweep run` proposes design points
with Optuna (grid, random or NSGA-II), rejects the ones over the analytic size limits before
anything trains, builds each run's full config once and trains each point's seeds as ordinary
runs in `DIR/trials/<point>-s<seed>/`; `sqz sweep status` and `sqz sweep report` read those run
directories (the source of truth) into tables, Pareto fronts, figures and a self-contained HTML
page.

A design point is a dict {dotted config key: value} from the sweep file's builders to the run's
config; its only other form is Optuna's (params.py encodes it at the Optuna boundary).

Modules: params (search parameters), space (the definition), sweepfile (loading sweep files and
their base experiment), design (SqueezeNet pooling ladders shared by sweep files), preflight
(what every trial needs, checked before any is registered), points (the Optuna study: ask,
register, tell), runconfig (a run's full config, built once at registration), study_view (the
study in the dashboards' units), latency (measured latency as an objective or constraint),
engine (scheduling, written once against the run store), store (the run-store interface),
store_open (which store a sweep uses), store_files (the journal: flock and claim files, over
claims) and store_db (a server database: run rows, over dbclaims), sweepdir (layout and run
states), workers (the worker loop), execute (training claimed runs and classifying their ends),
grouping (width-padded groups), early_stop (the median rule), launch (local processes, GPUs,
progress bar), slurm, dashboards (wandb settings, run names and groups), analyze, pareto,
text_format, metric_table, figures, figure_axes, paper_values (the paper's numbers beside the
measured ones), report, report_html, tensorboard, wandb_export, wandb_summary, cli and cli_args
(the command line).

The trial runner is injectable (`--runner module:function`); the default is the real trainer,
`sqzexplore.train.runner:train_and_evaluate(config, workdir, *, on_eval=None)`, which carries
the hooks a worker looks for (`prepare`, `train_population`, `auto_population_size`).

Stop and restart: kill `sqz sweep run` at any moment (even SIGKILL) and run it again (see
points.py for the registration steps a kill can split). Finished
trials are recognised by their result.json and never rerun; a trial whose worker died (its claim's
process is gone, or on another host its heartbeat is older than --stale-after-s) is handed out
again and resumes from its own checkpoints; the Optuna study is told each design point once. A
sweep file edited after trials exist is refused (its fingerprint is stored in DIR/sweep.json):
use --new to archive the old directory, or a new --workdir.

Several processes, one machine: run `sqz sweep run SWEEP --workers N`, or start
`sqz sweep run SWEEP` (or `sqz sweep worker DIR`) again in another shell; they share the work
through DIR/sweep.lock.

Many machines, shared filesystem (the simple setup): put DIR on a filesystem all nodes mount with
working flock (NFSv4, NFSv3 with lockd, Lustre with -o flock, GPFS, BeeGFS) and run workers
anywhere, e.g. `sqz sweep run SWEEP --workdir /shared/sweeps/x --slurm --array 16`. The Optuna
study is the journal file DIR/study.journal (Optuna's JournalFileBackend, written under the same
flock): no database server. Keep --stale-after-s well above clock skew between nodes.

Many machines, a database: pass `--storage postgresql://user@host/db` (or mysql://) the first
time; it is stored in DIR/sweep.json and used by every later run. The database then holds the
study and coordinates everything (dbclaims.py): claims, heartbeats, stale-run recovery and
results are database transactions and no file lock is taken, so flock need not work across nodes
(Lustre localflock, NFS local_lock). DIR (sweep.json, the trial directories) must still be on a
shared filesystem, because the trials' files are what `status` and `report` read. sqlite:///path
is one machine's database and is coordinated like the journal. Server setup: docs/postgres.md.

Dashboards: `sqz sweep run --wandb offline|online` (or $WANDB_MODE, or the base config's
wandb.mode) logs one wandb run per trial, named from its design fields and seed, grouped per sweep
directory, plus a summary run when the sweep finishes (dashboards.py); `sqz sweep report
--tensorboard` mirrors every trial with HParams; `optuna-dashboard DIR/study.journal` shows the
study with named objectives; `sqz sweep export-wandb` writes a grid or random sweep as a wandb
sweep YAML for teams that use wandb agents.
"""
