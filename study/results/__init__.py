"""What is read back from MLflow: run records, ``best`` queries (and their fast SQL path),
statistics, findings, figures, the report and ``--compare``. Reads what the runner wrote (params,
metrics, tags, artifacts); never trains."""
