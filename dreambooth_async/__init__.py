"""dreambooth_async: an asyncio-first client for the Dreambooth image-generation API.

::

    import dreambooth_async as dba

    async with dba.DreamboothClient(api_key=...) as client:
        result = await client.generate(dba.Text2Img(model_id="midjourney", prompt="a cat"))
        paths = await result.save("out/")

``dreambooth_async.emulator`` is a local, stateful emulator of the service (needs the
``emulator`` extra for Pillow).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

import attrs as _attrs

from ._batch import AmbiguousSubmission, BatchInput, BatchItem, BatchRun, MapOptions, request_key
from ._cache import CachedResult, CacheStats, ResultCache
from ._client import DEFAULT_BASE_URL, DreamboothClient
from ._download import safe_file_name
from ._errors import (
    APIError,
    AuthenticationError,
    ClientClosedError,
    DownloadError,
    DreamboothError,
    EndpointNotFound,
    GenerationFailed,
    InsufficientCredits,
    JobNotFound,
    JobTimeout,
    OutputError,
    PermissionDenied,
    PromptFileError,
    RateLimitError,
    RequestValidationError,
    ServerError,
    TransportError,
)
from ._events import BatchEvent, EventKind
from ._manifest import ItemState, Manifest, ManifestError, read_manifest
from ._models import (
    ApiVersion,
    GenerationRequest,
    GenerationResult,
    Img2Img,
    Inpaint,
    ModelInfo,
    Processing,
    Scheduler,
    SystemLoad,
    Text2Img,
    WalletBalance,
)
from ._poller import Job, PollPolicy
from ._progress import ProgressReporter
from ._prompts import PromptFile, PromptFormat, read_prompts
from ._shard import shard
from ._telemetry import TelemetryOptions
from ._transport import RetryPolicy, Timeouts
from ._webhooks import WebhookReceiver, WebhookStats

if TYPE_CHECKING:
    from . import emulator as emulator

__version__ = "0.2.0"
"""The version of this package."""

__all__ = [
    "DEFAULT_BASE_URL",
    "APIError",
    "AmbiguousSubmission",
    "ApiVersion",
    "AuthenticationError",
    "BatchEvent",
    "BatchInput",
    "BatchItem",
    "BatchRun",
    "CacheStats",
    "CachedResult",
    "ClientClosedError",
    "DownloadError",
    "DreamboothClient",
    "DreamboothError",
    "EndpointNotFound",
    "EventKind",
    "GenerationFailed",
    "GenerationRequest",
    "GenerationResult",
    "Img2Img",
    "Inpaint",
    "InsufficientCredits",
    "ItemState",
    "Job",
    "JobNotFound",
    "JobTimeout",
    "Manifest",
    "ManifestError",
    "MapOptions",
    "ModelInfo",
    "OutputError",
    "PermissionDenied",
    "PollPolicy",
    "Processing",
    "ProgressReporter",
    "PromptFile",
    "PromptFileError",
    "PromptFormat",
    "RateLimitError",
    "RequestValidationError",
    "ResultCache",
    "RetryPolicy",
    "Scheduler",
    "ServerError",
    "SystemLoad",
    "TelemetryOptions",
    "Text2Img",
    "Timeouts",
    "TransportError",
    "WalletBalance",
    "WebhookReceiver",
    "WebhookStats",
    "__version__",
    "read_manifest",
    "read_prompts",
    "request_key",
    "safe_file_name",
    "shard",
]


# Public classes print as ``dreambooth_async.X`` (tracebacks, reprs, docs), not as the private
# module that happens to define them; every one of them is importable from here.
# String annotations are resolved against a class's module, so attrs classes have theirs
# resolved (and cached) while that is still the module that defines them.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) and _value.__module__.startswith(f"{__name__}._"):
        if _attrs.has(_value):
            _attrs.resolve_types(_value, localns=globals())
        _value.__module__ = __name__
del _name, _value


def __getattr__(name: str) -> ModuleType:
    # The emulator pulls in Pillow: import it only when asked for.
    if name in ("emulator", "sync"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
