"""The science of the testbed: data mix, MoE model, routers, balancing, metrics, training.

Nothing in this package imports Ray, Optuna or MLflow, except the two thin adapters that run
the training loop under Ray: ``trainables.tune_trainable`` (a Ray Tune function trainable) and
``trainables.tune_data_parallel`` (the same trial as a Ray Train TorchTrainer over workers).
"""
