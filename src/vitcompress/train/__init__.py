"""Training loops (reference-model training; later: distillation, QAT, SAQA)."""
