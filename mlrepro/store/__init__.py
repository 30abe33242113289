"""The store: what a run holds in MLflow (``record``), the local spool that survives an outage,
the writer process, and the one policy on store failures. Never imports torch or analysis."""
