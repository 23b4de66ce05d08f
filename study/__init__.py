"""Orchestration of MoE routing studies: spec loading, Optuna search space, Ray Tune runner,
MLflow tracking, result queries, reports and the ``moe-study`` command line.

Modules here import Ray, Optuna and MLflow lazily where they can, and never build nn modules:
the science lives in ``trainables``.
"""
