"""The evaluation side of distill: scoring models for gender disparity and utility.

What lives here (the sampler both sides draw with is `distill.sampling`):

* gender polarity of generations (`polarity`), the disparity statistics and paired tests (`stats`, `paired`),
  and the scoring of generation records that `distill eval` and `distill score` share (`scoring`);
* utility on held-out text: perplexity and teacher agreement (`utility`);
* the prompt sets (`prompts`) and the likelihood probe (`probe`);
* the embedding and downstream lenses (`lenses/`);
* the report: results.json, report.md, plots, side-by-side samples (`report`, `lenses/report`, `output`);
* the commands: `distill eval` (`eval_command`), `distill samples` (`samples_command`) and `distill score`
  (`score_command`), with their shared checks (`validate`) and run-time helpers (`runtime`);
* a Hugging Face `evaluate` measurement for gender polarity (`evaluate_modules/gender_polarity`).
"""
