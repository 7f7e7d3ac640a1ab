"""Benchmarks, outside the training path: they call what training calls and time it through explicit hooks.

    run.py         `distill bench`: the sections (steps, loss, memory, generation, swaps), each a ratio inside
                   one run; a step is `distill.train.step.kd_step`, timed through its `phases` hook
    setup.py       shapes, tokenizer, batches and the Trainer that holds one configuration's models
    memory.py      peak memory of a step per configuration, in child processes
    generation.py  batched against sequential sampling; token swap throughput
    swap.py        text swap throughput (the augmentation's `Lexicon.swap_text`)
    report.py      the result keys, the targets and the printed table of `distill bench`
    cpu.py         `python -m distill.bench.cpu`: precision, sampler and demo-sizing timings on a CPU
    audit_targets.py  `python -m distill.bench.audit_targets`: male/female mass of the training targets (and
                      of trained students, `--student`) on the training positions; its tables: audit_tables.py
    probe_contexts.py `python -m distill.bench.probe_contexts`: the probe's offset after neutral prose, per run
    probe_runs.py     `python -m distill.bench.probe_runs`: the probe and perplexity of several-run models per
                      run, from evals' results.json, with runs p against a baseline
    audit_swap.py     `python -m distill.bench.audit_swap`: where the swap table is not one-to-one in mass
    audit_corpus.py   `python -m distill.bench.audit_corpus`: gendered-word counts before/after augmentation

Nothing is re-exported here: import from the submodule.
"""
