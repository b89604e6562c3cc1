"""Study configuration: one documented pydantic model per component, gathered in `StudyConfig`.

A config is YAML plus dotlist overrides (`curriculum.token_budget=2e6`, `curriculum.arms.1.start=0.3`).
Everything is validated before any work starts; every error names the field and says how to fix it.
Units are stated on every field: tokens, steps, words, fractions in [0, 1].
"""

from safepretrain.config.base import STREAMS, ConfigError, Strict
from safepretrain.config.curriculum import ArmConfig, CurriculumConfig, PhaseConfig, default_arms
from safepretrain.config.data import (
                                      DataConfig,
                                      InterventionConfig,
                                      RoutingConfig,
                                      ScorerConfig,
                                      TokenizerConfig,
                                      WorldConfig,
)
from safepretrain.config.evaluation import EvalConfig, JudgeConfig, ProbeConfig, SafeBeamConfig, TopKConfig
from safepretrain.config.study import StudyConfig, dump_config, load_config, reference_markdown
from safepretrain.config.training import (
                                      MODEL_PRESETS,
                                      BenignFTConfig,
                                      HarmfulFTConfig,
                                      IFTConfig,
                                      ModelConfig,
                                      PretrainConfig,
                                      TrainConfig,
)

__all__ = ["STREAMS", "MODEL_PRESETS", "ConfigError", "Strict", "StudyConfig", "WorldConfig", "DataConfig",
           "ScorerConfig", "RoutingConfig", "InterventionConfig", "TokenizerConfig", "CurriculumConfig", "ArmConfig",
           "PhaseConfig", "ModelConfig", "TrainConfig", "PretrainConfig", "IFTConfig", "BenignFTConfig",
           "HarmfulFTConfig", "EvalConfig",
           "TopKConfig", "SafeBeamConfig", "JudgeConfig", "ProbeConfig", "load_config", "dump_config",
           "reference_markdown", "default_arms"]
