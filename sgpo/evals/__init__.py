"""Evaluation: the one pairwise judge, lm-evaluation-harness glue, and one package per benchmark
(its protocol, parsing and metric together)."""
