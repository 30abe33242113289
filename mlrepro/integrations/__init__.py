"""Integrations: MLflow's run-context plugin, and the glue for training frameworks."""
