"""Running a study: the runner (Ray Tune + Optuna), the Tune trial function (one process or
data-parallel on Ray Train), MLflow tracking with its delivery queue, checkpoint repair and the
cluster resource check. The only package of the project that imports Ray."""
