"""Models: loading what the user names (zoo name, file.py:factory, module:factory) with its weights,
the pruned-checkpoint format, and the in-repo zoo."""

from edgecompress.models.loading import LoadedModel, ModelSpec, build, load_model, shipped_checkpoint
from edgecompress.models.pruned import FORMAT, apply_record, load_pruned, save_pruned, structural_record

__all__ = ["FORMAT", "LoadedModel", "ModelSpec", "apply_record", "build", "load_model", "load_pruned", "save_pruned",
           "shipped_checkpoint", "structural_record"]
