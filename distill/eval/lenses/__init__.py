"""The embedding and downstream lenses of `distill eval`: `embedding` (association of words with
gender in the model's representations), `downstream` (a probe's occupation predictions on biographies),
`run` (planning, scoring one model, merging runs, paired comparisons) and `report` (their report section)."""
