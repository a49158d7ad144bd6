"""The whole job (`keras-sr-run`): `run_recipe` plans, runs and resumes every part within a
wall-time budget (`job`), shows one progress view for it (`progress`), and measures and reports
what it made (`results`)."""
from keras_sr.recipe.job import JobMismatch, check_sources, check_teacher, run_recipe

__all__ = ["JobMismatch", "check_sources", "check_teacher", "run_recipe"]
