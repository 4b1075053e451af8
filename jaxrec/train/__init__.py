"""jaxrec.train: configs, the jitted train step (one device, pmap, sharded on a (data, model)
mesh), Orbax checkpoints, early stopping, and ``train_and_evaluate(config, workdir)``.

- Configs: ``load_config(path, overrides)`` reads YAML with ``--set key=value`` overrides into
  an :class:`ExperimentConfig` (defaults in code, unknown keys rejected with a suggestion).
- Runs: ``train_and_evaluate`` trains, early-stops on validation, reports test at the best
  validation epoch and writes ``config.yaml``, ``history.jsonl``, ``metrics.json``,
  ``curves.png`` and checkpoints to a workdir; ``evaluate_run`` recomputes a finished run's
  metrics from its best checkpoint; ``run_search`` runs a grid or random search picking its
  winner by validation only.
"""

# Configs.
from jaxrec.train._config import DataConfig as DataConfig
from jaxrec.train._config import EvalConfig as EvalConfig
from jaxrec.train._config import ExperimentConfig as ExperimentConfig
from jaxrec.train._config import ModelConfig as ModelConfig
from jaxrec.train._config import SearchConfig as SearchConfig
from jaxrec.train._config import TrainConfig as TrainConfig
from jaxrec.train._config import config_from_dict as config_from_dict
from jaxrec.train._config import config_to_dict as config_to_dict
from jaxrec.train._config import valid_keys as valid_keys
from jaxrec.train._config_io import apply_overrides as apply_overrides
from jaxrec.train._config_io import dump_config as dump_config
from jaxrec.train._config_io import load_config as load_config
from jaxrec.train._config_io import parse_override as parse_override
from jaxrec.train._config_io import resolve_paths as resolve_paths

# Pieces of a run.
from jaxrec.train._checkpoint import Checkpoints as Checkpoints
from jaxrec.train._data import EpochSampler as EpochSampler
from jaxrec.train._data import load_dataset as load_dataset
from jaxrec.train._data import select_modalities as select_modalities
from jaxrec.train._early_stopping import EarlyStopping as EarlyStopping
from jaxrec.train._early_stopping import update_early_stopping as update_early_stopping
from jaxrec.train._state import TrainState as TrainState
from jaxrec.train._state import init_entry_points as init_entry_points
from jaxrec.train._state import init_state as init_state
from jaxrec.train._state import learning_rate_schedule as learning_rate_schedule
from jaxrec.train._state import epoch_gated as epoch_gated
from jaxrec.train._state import make_optimizer as make_optimizer
from jaxrec.train._step import StepMetrics as StepMetrics
from jaxrec.train._step import StepRunner as StepRunner
from jaxrec.train._step import make_train_step as make_train_step
from jaxrec.train._mesh import MeshStepRunner as MeshStepRunner
from jaxrec.train._mesh import TableLayout as TableLayout
from jaxrec.train._mesh import make_mesh as make_mesh
from jaxrec.train._mesh import make_runner as make_runner
from jaxrec.train._mesh import sharding_report as sharding_report
# Multi-process runs (jax.distributed): join before any JAX computation.
from jaxrec.train._distributed import check_arguments as check_distributed_arguments
from jaxrec.train._distributed import check_parallel_mode
from jaxrec.train._distributed import initialize as initialize_distributed

# Building a run (public: used by the trainer, `jaxrec evaluate`, benchmarks, tests, serving).
from jaxrec.train._setup import Experiment as Experiment
from jaxrec.train._setup import epoch_context as epoch_context
from jaxrec.train._setup import evaluate_params as evaluate_params
from jaxrec.train._setup import evaluate_params_on_splits as evaluate_params_on_splits
from jaxrec.train._setup import loss_term_names as loss_term_names
from jaxrec.train._setup import make_encoder as make_encoder
from jaxrec.train._setup import prepare_eval_splits as prepare_eval_splits
from jaxrec.train._setup import prepare_experiment as prepare_experiment
from jaxrec.train._setup import metrics_at_k as metrics_at_k
from jaxrec.train._setup import resolve_loss_weights as resolve_loss_weights

# Whole runs.
from jaxrec.train._loop import TrainHooks as TrainHooks
from jaxrec.train._loop import train_and_evaluate as train_and_evaluate
from jaxrec.train._evaluate_run import evaluate_run as evaluate_run
from jaxrec.train._evaluate_run import best_epoch_of as best_epoch_of
from jaxrec.train._evaluate_run import restore_best as restore_best

# A run folder's files.
from jaxrec.train._outputs import CONFIG_FILE as CONFIG_FILE
from jaxrec.train._outputs import HISTORY_FILE as HISTORY_FILE
from jaxrec.train._outputs import METRICS_FILE as METRICS_FILE
from jaxrec.train._outputs import SEARCH_FILE as SEARCH_FILE
from jaxrec.train._outputs import finished_run as finished_run
from jaxrec.train._outputs import read_json as read_json
from jaxrec.train._outputs import compare_table as compare_table
from jaxrec.train._outputs import test_figures as test_figures
from jaxrec.train._search import expand_trials as expand_trials
from jaxrec.train._search import pick_best as pick_best
from jaxrec.train._search import run_search as run_search

# The machine.
from jaxrec.train._workdir import available_memory as available_memory
