"""Translations from released third-party configs and checkpoints to this project's components."""
