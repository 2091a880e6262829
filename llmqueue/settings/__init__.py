"""Settings: one model the whole program reads, built once at start-up.

Sources, lowest to highest precedence: defaults → ``config.toml`` → environment → explicit arguments.
The ``[llm]`` section and the ``LLM_*`` variables keep OpenHands' names and defaults; ``[llm.<name>]``
tables are named groups that override ``[llm]`` for the jobs that name them.

The sections' models are in :mod:`~llmqueue.settings.llm` and :mod:`~llmqueue.settings.worker`, the
whole in :mod:`~llmqueue.settings.schema`, and reading config.toml in :mod:`~llmqueue.settings.load`.
"""

from llmqueue.settings.llm import LimitConfig, LLMConfig
from llmqueue.settings.load import DEFAULT_CONFIG_FILE, load_settings, read_config_file
from llmqueue.settings.schema import REDIS_SCHEMES, Settings
from llmqueue.settings.worker import RESULT_STORE_PATIENCE, BatchConfig, CacheConfig, WorkerConfig

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "REDIS_SCHEMES",
    "RESULT_STORE_PATIENCE",
    "BatchConfig",
    "CacheConfig",
    "LLMConfig",
    "LimitConfig",
    "Settings",
    "WorkerConfig",
    "load_settings",
    "read_config_file",
]
