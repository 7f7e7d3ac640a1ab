"""The ablation study: which part of counterfactual role reversal buys what, over several seeds.

    python -m distill.study --help     # the command: distill/study/__main__.py

Nothing is imported here, so that `distill.study.arms` and the other modules load without the rest.
"""
