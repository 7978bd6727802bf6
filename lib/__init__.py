"""Framework core: config, matrix planning, runner, training loop, data, pruning, metrics."""
