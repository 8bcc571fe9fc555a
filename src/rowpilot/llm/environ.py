"""Where API keys come from: the process environment over a ``.env`` file.

Its own small module so that a job that may call a provider reads its keys without
importing the provider SDKs (about 1.4 s here); they load only when a call is made.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

from rowpilot.errors import ConfigError


def load_environ(env_file: Path | None) -> dict[str, str]:
    """The process environment over the ``.env`` file's values (the real environment wins).

    The values stay in this mapping: nothing is written to ``os.environ``, so a key read
    here reaches the SDK client and nothing else.
    """
    path = env_file if env_file is not None else Path(".env")
    values: dict[str, str] = {}
    if env_file is not None and not path.is_file():
        raise ConfigError(f"env file {path} does not exist", hint="check --env-file")
    if path.is_file():
        values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return {**values, **os.environ}
