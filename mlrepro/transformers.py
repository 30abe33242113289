"""``mlrepro.transformers``: the Hugging Face Trainer under mlrepro (``pip install 'mlrepro[transformers]'``).
The callback lives in ``mlrepro.integrations.transformers``."""

from mlrepro.integrations.transformers import MlreproCallback

__all__ = ["MlreproCallback"]
