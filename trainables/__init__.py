"""The science of the testbed: data mix, MoE model, routers, balancing, metrics, training.

Nothing in this package imports Ray, Optuna or MLflow, except the two thin adapters that run
the training loop under Ray: ``study.run.trial`` (a Ray Tune function trainable) and
``study.run.trial`` (the same trial as a Ray Train TorchTrainer over workers).
"""
