"""Training: the loop (schedule, augmentation, checkpoints, DDP shards), distillation losses,
feature hints, the KD round of a run (one process or several) and its resume checkpoints."""
