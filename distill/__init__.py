"""distill: knowledge distillation for causal LMs with counterfactual role reversal.

Run `distill --help` (or `python -m distill --help`) for the commands.
"""

__version__ = "0.1.0"
