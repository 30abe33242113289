"""Every MLflow key mlrepro writes or reads, in one place.

Tags carry the ``mlrepro.`` prefix so they group together in the UI and can be
searched (``tags."mlrepro.spec_hash" = '...'``).
"""

TAG_PREFIX = "mlrepro."
TAG_JOB = "mlrepro.job"
TAG_SPEC_HASH = "mlrepro.spec_hash"
TAG_ENV_HASH = "mlrepro.env_hash"
TAG_ERROR = "mlrepro.error"

# Tag of each environment fact: mlrepro.<fact>, e.g. mlrepro.torch.version.
ENV_TAG_PREFIX = TAG_PREFIX

# The per-step loss metric, unless a spec names another.
DEFAULT_LOSS_METRIC = "loss"

ARTIFACT_DIR = "mlrepro"
SPEC_ARTIFACT = "mlrepro/spec.json"
ENVIRONMENT_ARTIFACT = "mlrepro/environment.json"
SEED_ARTIFACT = "mlrepro/seeding.json"
# The exact loss sequence: float64 values with their steps, bit for bit (the
# metric store turns +-inf into +-max-float and every NaN into one NaN).
LOSSES_ARTIFACT = "mlrepro/losses.npz"
