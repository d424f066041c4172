"""Evaluation: held-out loss, classifier accuracy and sample quality (FD, KID, precision / recall)."""
