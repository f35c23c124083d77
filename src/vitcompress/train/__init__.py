"""Training: the one resumable training loop (``trainer``), its schedule, distillation losses, QAT set-up and
reference-model (zoo) training."""
