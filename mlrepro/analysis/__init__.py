"""Analysis: bitwise comparison of runs, ranked causes, plots. Pure: records in, verdicts out;
it knows nothing of MLflow, torch or training."""
