"""Counterfactual role reversal (CRR), the data side: the gendered-word lexicon, the English her/his rules, the
text swap and the `distill swap` command, the token swap tables and the counterfactual blocks with position
alignment that the teacher's counterfactual pass consumes.

    lexicon.py       lexicon files, their validation, the compiled text swap (`Lexicon`, `load_lexicon`)
    english.py       the her/his disambiguation rules the text swap applies
    swap_command.py  `distill swap`: stdin -> gender-swapped stdout
    token_table.py   per-tokenizer swap tables of single-token gendered words (`build_token_swap_table`)
    token_swap.py    counterfactual blocks of token ids and their alignment (`counterfactual_batch`)

`distill/crr/vocab.py` (vocabulary operations on teacher distributions) is added by the training redesign.

Nothing is re-exported here: import the module you need, so `distill swap` never loads torch and importing
one part costs nothing for the others.
"""
