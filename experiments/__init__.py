"""Experiments built on fedhn: the reproduction of the paper's claims in federated settings
(:mod:`experiments.reproduce`, results in docs/results.md)."""
