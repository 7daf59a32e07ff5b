"""The pipeline: a typed run context, the stages in order (``stages``), the closing evaluation,
benchmark and manifest (``verify``), the staging directory (``rundir``) and the runner."""

from edgecompress.pipeline.context import RunContext, RunResult, StopRun
from edgecompress.pipeline.inputs import seed_everything
from edgecompress.pipeline.runner import run

__all__ = ["RunContext", "RunResult", "StopRun", "run", "seed_everything"]
