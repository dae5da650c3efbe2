"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from typing import Any

from kedro.config import OmegaConfigLoader

from povid_kedro.hooks import (
    NodeTimerHooks,
    ParameterCheckHooks,
    RunGuardHooks,
    RunStartedHooks,
    UpstreamCheckHooks,
)

# kedro-mlflow registers its own hooks through its entry point; the guard's checks and the run
# lock run before its hooks (tryfirst), RunStartedHooks after it has opened the MLflow run.
_guard = RunGuardHooks()
HOOKS = (
    _guard,
    RunStartedHooks(_guard),
    UpstreamCheckHooks(),
    ParameterCheckHooks(),  # registered later, called earlier: parameters before inputs
    NodeTimerHooks(),
)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS: dict[str, Any] = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/llava15, conf/local) overrides single parameters, not whole
    # pipelines' parameter blocks; catalog entries are still replaced whole.
    "merge_strategy": {"parameters": "soft"},
}
