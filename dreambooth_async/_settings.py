"""The client's defaults and what it reads from the environment: the service, the version, the
key or keys (checked, and named by position in every error, never by value)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ._errors import RequestValidationError
from ._keys import position
from ._models import ApiVersion

__all__ = [
    "API_KEY_ENV",
    "API_KEY_ENV_FALLBACK",
    "BASE_URL_ENV",
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "MANIFEST_NAME",
    "METADATA_NAME",
    "TIME_SCALE_HELP",
    "api_key_from_env",
    "api_keys_from_env",
    "base_url_from_env",
    "checked_keys",
]

#: What an emulator's time scale is, in the words of every option that sets it.
TIME_SCALE_HELP = "real seconds per service second: 0.01 makes a 30 s job take 0.3 s"

DEFAULT_BASE_URL = "https://modelslab.com"
"""The real service's root URL: the default ``base_url`` of every client (the legacy v3/v4
API of the 2023 pages answered at ``https://stablediffusionapi.com``)."""
DEFAULT_API_VERSION: ApiVersion = "v6"
"""The API version a client speaks unless told otherwise: today's documented image API."""
API_KEY_ENV = "DREAMBOOTH_API_KEY"
#: Read when ``DREAMBOOTH_API_KEY`` is not set: the name the service's own tools use.
API_KEY_ENV_FALLBACK = "MODELSLAB_API_KEY"
BASE_URL_ENV = "DREAMBOOTH_BASE_URL"


#: The files a run writes into its output folder: the Hugging Face imagefolder's metadata and
#: the batch manifest (the CLI, the gallery and merge all read them by these names).
METADATA_NAME = "metadata.jsonl"
MANIFEST_NAME = "dreambooth-manifest.jsonl"


def base_url_from_env() -> str:
    """``DREAMBOOTH_BASE_URL`` when set, else :data:`DEFAULT_BASE_URL`."""
    return os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL


def api_key_from_env() -> str | None:
    """The key from ``DREAMBOOTH_API_KEY``, else ``MODELSLAB_API_KEY`` (None when neither)."""
    for name in (API_KEY_ENV, API_KEY_ENV_FALLBACK):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def api_keys_from_env() -> list[str]:
    """The keys of ``api_key_from_env()``, split at commas (``key1,key2``): several keys
    pool their queue slots. Empty when neither variable is set."""
    value = api_key_from_env()
    return [] if value is None else [part.strip() for part in value.split(",") if part.strip()]


def checked_keys(api_key: str | Sequence[str] | None) -> tuple[str, ...]:
    """The keys to use, stripped and checked; errors name a key by position, never by value."""
    if api_key is None:
        given: list[object] = list(api_keys_from_env())
    elif isinstance(api_key, str):
        given = [api_key]
    elif isinstance(api_key, Sequence):
        given = list(api_key)
    else:
        given = []
    keys: list[str] = []
    for index, key in enumerate(given):
        # Stray whitespace (a trailing newline from a secrets file) is never part of a key.
        text = key.strip() if isinstance(key, str) else ""
        if not text:
            where = f" ({position(index)} is empty or not a string)" if len(given) > 1 else ""
            raise RequestValidationError(
                "api_key",
                None,
                f"a non-empty string or a sequence of them{where} (pass api_key= or set "
                f"{API_KEY_ENV} or {API_KEY_ENV_FALLBACK})",
            )
        if text in keys:
            raise RequestValidationError(
                "api_key",
                None,
                f"distinct keys ({position(index)} repeats {position(keys.index(text))}: one "
                "account's queue slots would be counted twice)",
            )
        keys.append(text)
    if not keys:
        raise RequestValidationError(
            "api_key",
            None,
            f"a non-empty string (pass api_key= or set {API_KEY_ENV} or {API_KEY_ENV_FALLBACK})",
        )
    return tuple(keys)
