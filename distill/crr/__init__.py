"""Counterfactual role reversal (CRR): the gendered-word lexicon, the English her/his rules, the
text swap and the `distill swap` command, the token swap tables, the counterfactual blocks with position
alignment that the teacher's counterfactual pass consumes, and the vocabulary-level operations on its output.

    lexicon.py       lexicon files, their validation, the compiled text swap (`Lexicon`, `load_lexicon`)
    trie.py          the prefix-trie regex alternation the compiled swap is built from
    english.py       the her/his disambiguation rules the text swap applies
    swap_command.py  `distill swap`: stdin -> gender-swapped stdout
    token_table.py   per-tokenizer swap tables of single-token gendered words (`build_token_swap_table`)
    token_swap.py    counterfactual blocks of token ids and their alignment (`counterfactual_batch`)
    token_align.py   the position alignment of token_swap (rules 5 and 5b)
    causal.py        counterfactual contexts that read no token after the one predicted (rule 8)
    vocab.py         the same swaps on the teacher's next-token distributions: the swap plan, mapping a
                     counterfactual distribution back, pair equalisation, the cf_* combinations

Nothing is re-exported here: import the module you need, so `distill swap` never loads torch and importing
one part costs nothing for the others.
"""
