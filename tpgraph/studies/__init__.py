"""Studies: hyper-parameter searches and seed sweeps over ordinary training runs.

A study sits above :mod:`tpgraph.train`: a spec (:mod:`.spec`) says what to
search and how to judge a trial; the runner (:mod:`.runner`) asks Optuna for
trials and runs them on Dask distributed (a ``LocalCluster`` by default, any
scheduler by address), each trial a set of trainer runs (:mod:`.trial`) whose
results go to an Optuna RDB storage (SQLite in the study folder by default);
:mod:`.report` reads it back; :mod:`.reproduce` builds the paper's Tables 1
and 2 from studies. The engine never knows it runs in a study.

>>> from tpgraph.studies import load_spec, run_study                  # doctest: +SKIP
>>> result = run_study(load_spec("examples/studies/lr_search.toml"), "studies/lr")  # doctest: +SKIP
"""

from .report import format_table, study_table, write_report
from .runner import DaskExecutor, SerialExecutor, Study, StudyProgress, make_executor, run_study
from .spec import OBJECTIVES, Param, StudySpec, load_spec, parse_spec
from .trial import TrialJob, run_trial

__all__ = [
    "DaskExecutor", "OBJECTIVES", "Param", "SerialExecutor", "Study", "StudyProgress", "StudySpec", "TrialJob",
    "format_table", "load_spec", "make_executor", "parse_spec", "run_study", "run_trial", "study_table",
    "write_report",
]
