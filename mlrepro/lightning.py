"""``mlrepro.lightning``: PyTorch Lightning under mlrepro (``pip install 'mlrepro[lightning]'``).
The callback, the resumable loader and the MLflow logger live in ``mlrepro.integrations.lightning``."""

from mlrepro.integrations.lightning import (
    MlreproCallback,
    ResumableLoader,
    mlflow_logger,
    resumable,
)

__all__ = ["MlreproCallback", "ResumableLoader", "mlflow_logger", "resumable"]
