"""Counterfactual role reversal: vocabulary-level operations on the teacher's distributions."""
