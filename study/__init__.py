"""Orchestration of MoE routing studies, in three packages whose imports run downward only:

- ``study.results``: what is read back from MLflow (queries, statistics, findings, reports);
- ``study.run``: the runner, the Tune trial function, tracking (the only Ray modules);
- ``study.spec``: the study spec, its checks and the Optuna search space;

over ``trainables`` (the science, no Ray and no ``study``). ``study.naming`` (MLflow names and
metric vocabulary) sits under all three; ``study.cli`` is the thin command line on top.
"""
