"""The record of a run (typed manifest records -> manifest.json), report.md generated from it, and plots."""

from edgecompress.report.manifest import (
    ARTIFACT_ORDER,
    SCHEMA,
    SCHEMA_VERSION,
    Artifact,
    Gate,
    Manifest,
    command_line,
    load_manifest,
    versions,
)
from edgecompress.report.render import render_report

__all__ = ["ARTIFACT_ORDER", "SCHEMA", "SCHEMA_VERSION", "Artifact", "Gate", "Manifest", "command_line",
           "load_manifest", "render_report", "versions"]
