"""The result cache: a seeded request that was paid for once is never paid for again.

``DreamboothClient(cache=PATH)`` keeps, in one SQLite file, every finished result of a request
with an explicit seed (a random seed asks for a new image by design, so it is never cached),
keyed by a hash of the request as it goes on the wire (model, prompt, every parameter), the API
version and the service origin; never the key, the webhook or the track id.

How a row lives (one row per key, shared by every process using the file):

- ``claimed``: a process is sending the submission now; others wait for its answer.
- ``submitted``: the service accepted it as job ``job_id``; others attach to that job.
- ``done``: the answer (the service's JSON, with the key redacted) and the stored images.

Images are kept content-addressed (``<sha256>.<ext>``) in the folder ``<name>-images`` beside
the database, fetched when the result is stored: the service's links expire (``temp`` links
after 24 h), the cached answer does not. A result that comes back from the cache is a
:class:`CachedResult`: a :class:`GenerationResult` whose ``output`` keeps the service's links
and whose ``files`` name the stored copies; its ``save()`` copies them, with no download.

The modules, one step each: :mod:`.store` (the SQLite rows), :mod:`.files` (the stored images),
:mod:`.flights` (a client's submissions through the cache, seeing the client as a
:class:`~.flights.JobHost`). :class:`CachedResult` is plain data, in ``_models``; what a run
would cost (``--dry-run``) is the batch's (``_batch.dry_run``); ``dreambooth-async cache`` is
the command line's (``cli.cache``).
"""

from .._models import CachedResult
from .flights import CachedSubmissions, JobHost
from .store import CLAIM_TIMEOUT, CacheRow, CacheStats, ResultCache, cache_key

__all__ = [
    "CLAIM_TIMEOUT",
    "CacheRow",
    "CacheStats",
    "CachedResult",
    "CachedSubmissions",
    "JobHost",
    "ResultCache",
    "cache_key",
]
