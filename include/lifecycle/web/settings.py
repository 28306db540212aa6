"""How a web app gets its settings: given once, or asked of a provider.

The Airflow plugin passes a provider that reads the Airflow connections; `lifecycle
serve-public`, `uvicorn` and the tests pass `Settings` built from the environment.
"""

from __future__ import annotations

from collections.abc import Callable

from lifecycle.core.config import Settings

SettingsSource = Settings | Callable[[], Settings]


def provider(source: SettingsSource) -> Callable[[], Settings]:
    if isinstance(source, Settings):
        return lambda: source
    return source
