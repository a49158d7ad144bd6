"""The paper's ablations (`keras-sr-ablate`): backbone, QAT placement and teacher tables.

`run_ablation` runs or resumes them (`run`), cell by cell (`cells`), recording each part done in
the work directory (`keras_sr.common.ledger`), and writes each table as JSON and Markdown
(`tables`). What runs and for how long: `keras_sr.configs.ablation`.
"""
from keras_sr.ablation.run import BadInput, check_inputs, run_ablation
from keras_sr.common.ledger import SettingsMismatch as AblationMismatch

__all__ = ["AblationMismatch", "BadInput", "check_inputs", "run_ablation"]
