"""Training: RECAP / DAPO reinforcement learning on TRL's ``GRPOTrainer`` (``config`` → ``build`` →
``trainer`` → ``run``, with ``resume`` and ``distributed``), the supervised stages before it (``sft``:
warm start and context distillation; ``verify``: safety-verification training) and the export to verl
(``verl``).

The RL entry points are re-exported here: ``from recap.train import TrainConfig, train``.
"""

from recap.train.build import build_trainer, grpo_config, rl_rows, vllm_mode
from recap.train.config import TrainConfig, check_train_config, dynamic_prefills
from recap.train.resume import config_dump, input_hashes, last_checkpoint
from recap.train.run import TRAIN_LOG, train
from recap.train.trainer import (
    RecapTrainer,
    completion_budget,
    dropped_groups,
    dynamic_sampling_drops,
    zero_variance_groups,
)

__all__ = [
    "TRAIN_LOG",
    "RecapTrainer",
    "TrainConfig",
    "build_trainer",
    "check_train_config",
    "completion_budget",
    "config_dump",
    "dropped_groups",
    "dynamic_prefills",
    "dynamic_sampling_drops",
    "grpo_config",
    "input_hashes",
    "last_checkpoint",
    "rl_rows",
    "train",
    "vllm_mode",
    "zero_variance_groups",
]
