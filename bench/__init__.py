"""llmqueue's benchmark suite (``python -m bench``): not part of the tests, it starts what it needs.

Each module is one benchmark with ``run(quick: bool) -> dict``; ``bench.__main__`` runs them, prints a
table per benchmark and writes ``bench/results.json``.
"""

import os

# Before anything imports litellm, here and in every process started from here: use the bundled model
# price map instead of fetching it over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
