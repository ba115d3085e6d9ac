"""Training: the run folder, resume, schedules, the training loop, validation, averaging and DDP."""
