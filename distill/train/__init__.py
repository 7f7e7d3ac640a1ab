"""Training: the `distill train` command and everything one distillation step needs.

`command.main` parses the recipe and runs `setup.build` -> `loop.fit` -> export; `loop.fit` calls
`step.kd_step` once per optimizer step, and so does `distill bench`. `targets` computes the teacher's
targets (plain, pair-equalised, counterfactual), `target_cache` caches top-k targets per block, `losses`
holds the divergences, `data` the datasets and block sampler, `transfer` the teacher-written corpus,
`run_lifecycle` the run directory (checks, start, commit, abandon), `checkpoint` checkpoints and resume,
`export` the final model and its card, `engine` the ddp / FSDP / DeepSpeed preparation. Nothing is
re-exported here: import from the submodule.
"""
