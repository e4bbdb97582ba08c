"""Alignment logic: models, generation, judging, red-teaming, training and evaluation (no Gradio here)."""

from alignment.quiet import quiet_library_noise

quiet_library_noise()
