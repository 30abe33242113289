"""Every MLflow key mlrepro writes or reads, in one place.

Tags carry the ``mlrepro.`` prefix so they group together in the UI and can be
searched (``tags."mlrepro.spec_hash" = '...'``).
"""

TAG_PREFIX = "mlrepro."
TAG_JOB = "mlrepro.job"
TAG_SPEC_HASH = "mlrepro.spec_hash"
TAG_ENV_HASH = "mlrepro.env_hash"
TAG_ERROR = "mlrepro.error"
# A digest of the exact loss sequence: the UI rounds metric values, equal digests
# say "identical" at a glance, and runs can be searched by it.
TAG_LOSS_DIGEST = "mlrepro.loss_digest"
# On a resumed run, whose loss_digest covers the stitched losses: the digest of its own steps.
TAG_OWN_LOSS_DIGEST = "mlrepro.own_loss_digest"
# How the run ended when a signal stopped it ("KILLED by SIGINT"). `mlflow run` marks an interrupted
# run FAILED even after the job has ended it KILLED; this tag keeps the truth. A run stopped early on
# orders (a leg of check, a test's kill) is FINISHED short of its end: "stopped on orders after N steps".
TAG_ENDED = "mlrepro.ended"
ENDED_ON_ORDERS = "stopped on orders"
# The process that runs the run, "host/boot id/pid/start ticks": a RUNNING run whose process is gone was killed.
TAG_PROCESS = "mlrepro.process"
# mlrepro.verdict.<other run id> = the verdict of `mlrepro compare --log` against that run.
TAG_VERDICT_PREFIX = "mlrepro.verdict."
# Resuming: on the new run, the run it continues and the step it starts at; on the old one, who continued it.
TAG_RESUMED_FROM = "mlrepro.resumed_from"
TAG_RESUMED_AT_STEP = "mlrepro.resumed_at_step"
TAG_RESUMED_BY = "mlrepro.resumed_by"
# Checkpoints: mlrepro/checkpoints/step-000001000.pt, each with a .sha256 beside it.
CHECKPOINT_ARTIFACT_DIR = "mlrepro/checkpoints"
CHECKSUM_SUFFIX = ".sha256"


def checkpoint_file(step: int) -> str:
    """The file name of the checkpoint at ``step`` (steps done), in ``CHECKPOINT_ARTIFACT_DIR``."""
    return f"step-{step:09d}.pt"


# On the run `mlflow run -e compare` opens: the two runs compared and the verdict.
TAG_COMPARED_A = "mlrepro.compared.run_a"
TAG_COMPARED_B = "mlrepro.compared.run_b"
TAG_COMPARED_VERDICT = "mlrepro.compared.verdict"
TAG_COMPARED_IDENTICAL = "mlrepro.compared.identical"
# On the run `mlrepro check` records: its verdict, "passed: ..." or "failed: ...", and the table as JSON.
TAG_DETERMINISM_CHECKED = "mlrepro.determinism_checked"
# Environment facts that changed between the run opening and its training (a framework set a switch).
TAG_ENVIRONMENT_CHANGED = "mlrepro.environment_changed"
CHECK_ARTIFACT_DIR = "mlrepro"
# On a run made by `mlrepro reproduce`: the id of the run it repeats.
TAG_REPRODUCES = "mlrepro.reproduces"

# Tag of each environment fact: mlrepro.environment.<fact>, e.g. mlrepro.environment.torch.version.
# Runs logged before mlrepro 0.2 carry them as mlrepro.<fact>; the run record still reads those.
ENV_TAG_PREFIX = "mlrepro.environment."
# The class of the run's spec, "module:QualName": what `LoggedSpec.typed()` imports.
TAG_SPEC_CLASS = "mlrepro.spec_class"

# The per-step loss metric, unless a spec names another.
DEFAULT_LOSS_METRIC = "loss"

ARTIFACT_DIR = "mlrepro"
SPEC_ARTIFACT = "mlrepro/spec.json"
ENVIRONMENT_ARTIFACT = "mlrepro/environment.json"
SEED_ARTIFACT = "mlrepro/seeding.json"
# The code that ran and how to start it again (mlrepro.capture.code.CodeRecord).
CODE_ARTIFACT = "mlrepro/code.json"
# The exact loss sequence: float64 values with their steps, bit for bit (the
# metric store turns +-inf into +-max-float and every NaN into one NaN).
LOSSES_ARTIFACT = "mlrepro/losses.npz"
# Plots of `compare --log`: mlrepro/compare/<other run id>.png
COMPARE_ARTIFACT_DIR = "mlrepro/compare"
