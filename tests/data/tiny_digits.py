"""A seconds-long digits experiment for trainer tests (subprocess and multi-process runs)."""

import os

from sqzexplore.config import base_config, model_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, epochs=3.0, batch_norm=False)
    c = base_config()
    c.model = model_config(
        "digits",
        stem_filters=16,
        base_e=16,
        incr_e=16,
        squeeze_ratio=0.25,
        dropout=0.1,
        batch_norm=a.batch_norm,
    )
    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = a.epochs
    c.optim.name = "adamw"
    c.optim.lr = 3e-3
    c.optim.schedule = "cosine"
    c.eval_every_epochs = 1.0
    c.checkpoint_every_epochs = 1.0
    c.log_every_steps = 5
    c.progress = "false"
    c.compilation_cache_dir = os.environ.get("SQZ_TEST_XLA_CACHE", "")
    return c
