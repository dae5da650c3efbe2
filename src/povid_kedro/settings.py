"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from kedro.config import OmegaConfigLoader

from povid_kedro.hooks import NodeTimerHooks, UpstreamCheckHooks

# kedro-mlflow registers its own hooks through its entry point.
HOOKS = (UpstreamCheckHooks(), NodeTimerHooks())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/llava15, conf/local) overrides single parameters, not whole
    # pipelines' parameter blocks; catalog entries are still replaced whole.
    "merge_strategy": {"parameters": "soft"},
}
