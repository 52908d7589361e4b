"""Where runs train: one typed protocol (`base.Executor`), three executors.

- `local`: in this process, one run after another (`local.LocalExecutor`);
- `process`: in long-lived spawned worker processes (`workers`), logged by this process
  (`process.ProcessExecutor`);
- `ray`: as Ray tasks, here or on a cluster, each logging its own run (`ray_tasks.RayExecutor`).

Every executor takes runs from the invocation's `base.Claims` (claimed in the store first, so
invocations sharing a store train each run once) and ends each through `suite.lifecycle`.
The package must not expand studies or plan (`suite.runner` does), nor speak to MLflow but
through `suite.claims` and `suite.tracking`. Nothing is imported here: a worker process
imports `workers` without MLflow, and `overfit run` starts workers before importing it.
"""
