"""Integrations: MLflow's run-context plugin, and the glue for training frameworks (``lightning``:
PyTorch Lightning's callback, resumable loader and MLflow logger, imported only by a job that asks)."""
