"""The science of the testbed: data mix, MoE model, routers, balancing, metrics, training.

Nothing in this package imports Ray, Optuna or MLflow, except ``trainables.tune_trainable``,
the thin adapter that runs the training loop as a Ray Tune function trainable.
"""
