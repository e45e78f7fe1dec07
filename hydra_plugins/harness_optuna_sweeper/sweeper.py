"""The `harness_optuna` Hydra sweeper: asks Optuna for trials and runs them with the configured launcher."""

import logging
import sys

from hydra.plugins.sweeper import Sweeper

from harness.errors import ConfigError

logger = logging.getLogger(__name__)


class HarnessOptunaSweeper(Sweeper):
    """Runs an Optuna study as batches of Hydra jobs; the settings are HarnessOptunaSweeperConf's fields."""

    def __init__(self, **settings) -> None:
        self.settings = settings
        self.hydra_context = None
        self.config = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config,
        )

    def sweep(self, arguments):
        # Optuna, MLflow and transformers load only when a sweep runs, not at every Hydra
        # start-up, which imports this module to discover plugins.
        from hydra_plugins.harness_optuna_sweeper._impl import OptunaSweep

        try:
            return OptunaSweep(self, arguments).run()
        except ConfigError as error:
            # The same exit status as an invalid single run of harness.run.
            logger.error("Invalid sweep config: %s", error)
            sys.exit(2)
