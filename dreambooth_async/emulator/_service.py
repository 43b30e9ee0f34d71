"""The emulated service's state and rules, apart from HTTP: accounts, jobs, files, webhooks."""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import attrs
import yarl

from . import _bodies as bodies
from ._accounts import Accounts
from ._config import EmulatorConfig
from ._faults import FaultInjector
from ._images import ImageStore, RenderSpec, check_input_image, render
from ._jobs import BASE64_SUFFIX, Farm, Job, OutputStyle
from ._params import (
    GenerationParams,
    Kind,
    Version,
    is_loopback_url,
    is_web_url,
    parse_generation,
    parse_request_id,
)
from ._stats import EmulatorStats, KeyCounts, canonical_digest
from ._webhooks import WebhookSender

log = logging.getLogger("dreambooth_async.emulator")

#: The sample that stands in for an init or mask image on a non-loopback URL.
PLACEHOLDERS: Mapping[str, str] = {
    "init_image": "inpaint-photo.png",
    "mask_image": "inpaint-mask.png",
}

_IMAGE_TIMEOUT = aiohttp.ClientTimeout(total=30)
_MAX_DOWNLOAD = 32 * 1024 * 1024
_FIRST_JOB_ID = 1_000_001


@attrs.frozen
class Reply:
    """A service answer: ``body`` is sent with HTTP 200 unless ``http_errors`` is on, in which case
    ``error_status`` (when set) is used. ``retry_after`` becomes a Retry-After header on 429."""

    body: Any
    error_status: int | None = None
    retry_after: float | None = None


class _Rejected(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply)
        self.reply = reply


class _BadImage(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Service:
    """Everything the service knows. One event loop drives it; handlers never run in threads."""

    def __init__(
        self, config: EmulatorConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock
        self.stats = EmulatorStats(per_key=[KeyCounts() for _ in config.keys])
        self.accounts = Accounts(config)
        self.faults = FaultInjector(config.faults)
        self.farm = Farm(
            workers=config.workers, models=config.models, cold_models=config.cold_models
        )
        self.images = ImageStore()
        self._placeholders_said: set[str] = set()
        self.webhooks = WebhookSender(config, self.stats, clock)
        self.jobs: dict[int, Job] = {}
        self._by_prefix: dict[str, Job] = {}
        self._next_id = _FIRST_JOB_ID
        self._keys = frozenset(config.keys)
        # Records name a key by its position in config.keys, never by its text.
        self._position = {key: index for index, key in enumerate(config.keys)}
        # Separate streams so that, for a seed, ETAs do not shift when more jobs run, and so on.
        self._cost_rng = random.Random(f"{config.seed}:cost")
        self._eta_rng = random.Random(f"{config.seed}:eta")
        self._naming_rng = random.Random(f"{config.seed}:naming")
        self._idless_rng = random.Random(f"{config.seed}:idless")
        self._spam_seen: dict[str, float] = {}
        self._spam_order: collections.deque[tuple[float, str]] = collections.deque()
        self._session: aiohttp.ClientSession | None = None

    # -- lifetime ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.webhooks.bind(self._session)

    async def aclose(self) -> None:
        await self.webhooks.aclose()
        await self.images.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- helpers -----------------------------------------------------------------------------

    def _check_key(self, body: Any) -> str:
        if not isinstance(body, Mapping):
            raise _Rejected(Reply(bodies.INVALID_JSON, 400))
        key = body.get("key")
        if not isinstance(key, str) or key not in self._keys:
            raise _Rejected(Reply(bodies.INVALID_KEY, 401))
        return key

    def _counts(self, key: str) -> KeyCounts:
        return self.stats.per_key[self._position[key]]

    def eta(self, job: Job, now: float) -> float:
        cfg = self.config
        remaining = max(0.0, job.expected_finish - now)
        if not cfg.eta_noise:
            noise = 1.0
        elif cfg.eta_noise_kind == "uniform":
            noise = 1.0 + self._eta_rng.uniform(-cfg.eta_noise, cfg.eta_noise)
        else:
            noise = 1.0 + self._eta_rng.gauss(0.0, cfg.eta_noise)
        return max(0.0, remaining * (1.0 + cfg.eta_bias) * noise)

    # -- submissions -------------------------------------------------------------------------

    async def submit(
        self, body: Any, *, kind: Kind, version: Version, origin: str, own_port: int | None
    ) -> Reply:
        try:
            key = self._check_key(body)
            params = parse_generation(body, kind=kind, version=version)
            if not isinstance(params, GenerationParams):
                raise _Rejected(Reply(bodies.field_errors(params), 400))
            if params.model_id in self.config.premium_models:
                # Before the model lookup: the plan is checked whether or not the model exists.
                self.stats.rejected_premium += 1
                self._counts(key).rejected_403 += 1
                return Reply(bodies.PREMIUM_REQUIRED, 403)
            if not self.farm.knows(params.model_id):
                raise _Rejected(Reply(bodies.MODEL_NOT_FOUND, 400))
            init, mask = await self._load_inputs(params, own_port)
        except _Rejected as rejected:
            self.stats.rejected_invalid += 1
            return rejected.reply
        # No await from here to the acceptance: the wallet, spam and slot checks and the booking
        # must be one step, or two concurrent requests could both take the last slot or credit.
        now = self.clock()
        cfg = self.config
        counts = self._counts(key)
        price = self.accounts.price(params.samples)
        if not self.accounts.can_pay(key, price):
            self.stats.rejected_credits += 1
            counts.rejected_402 += 1
            return Reply(bodies.INSUFFICIENT_CREDITS, 402)
        fingerprint = ""
        if cfg.spam_filter:
            fingerprint = f"{kind}\0{json.dumps(body, sort_keys=True, separators=(',', ':'))}"
            wait = self._spam_wait(fingerprint, now)
            if wait > 0:
                self.stats.rejected_spam += 1
                counts.rejected_429 += 1
                return Reply(bodies.spam(cfg.scaled(cfg.spam_window)), 429, retry_after=wait)
        limit = cfg.queue_limit_of(key)
        if self.farm.slots_in_use(key, now) >= limit:
            self.stats.rejected_queue_full += 1
            counts.rejected_429 += 1
            retry_after = (
                self.farm.next_slot_free_in(key, now)
                if cfg.queue_full_retry_after is None
                else cfg.scaled(cfg.queue_full_retry_after)
            )
            return Reply(bodies.queue_full(limit, retry_after), 429, retry_after)
        self.accounts.charge(key, price)
        counts.spent = self.accounts.spent(key)
        self.stats.accepted_by_request[canonical_digest(body)] += 1
        job = self._accept(key, params, origin, now, init, mask)
        if cfg.spam_filter:
            self._spam_seen[fingerprint] = now
            self._spam_order.append((now, fingerprint))
        return await self._answer_submission(job, now)

    def _spam_wait(self, fingerprint: str, now: float) -> float:
        window = self.config.scaled(self.config.spam_window)
        while self._spam_order and self._spam_order[0][0] <= now - window:
            seen_at, old = self._spam_order.popleft()
            if self._spam_seen.get(old) == seen_at:
                del self._spam_seen[old]
        seen_at_or_none = self._spam_seen.get(fingerprint)
        return 0.0 if seen_at_or_none is None else seen_at_or_none + window - now

    def _accept(
        self,
        key: str,
        params: GenerationParams,
        origin: str,
        now: float,
        init: str | None,
        mask: str | None,
    ) -> Job:
        cfg = self.config
        p = params
        spread = (
            max(0.05, 1.0 + self._cost_rng.gauss(0.0, cfg.cost.noise)) if cfg.cost.noise else 1.0
        )
        run = cfg.scaled(
            cfg.cost.mean_duration(steps=p.steps, samples=p.samples, width=p.width, height=p.height)
            * spread
        )
        faults = self.faults.draw_job()
        for kind in faults.kinds():
            self.stats.faults[kind] += 1
        overrun = cfg.scaled(cfg.faults.stuck_extra) if faults.stuck else 0.0
        if self.farm.model_status(p.model_id, now) == "model_unloaded":
            self.farm.begin_load(p.model_id, now, cfg.scaled(cfg.cold_start))
        start, finish = self.farm.place(
            key=key, model_id=p.model_id, run=run, overrun=overrun, now=now
        )
        seed = p.seed if p.seed is not None else self._naming_rng.randrange(2**32)
        prefix = str(uuid.UUID(int=self._naming_rng.getrandbits(128), version=4))
        job = Job(
            id=self._next_id,
            key=key,
            params=p,
            seed=seed,
            file_prefix=prefix,
            origin=origin,
            extension=cfg.image_format,
            created_at=now,
            started_at=start,
            scheduled_finish=finish,
            expected_finish=finish - overrun,
            run_seconds=run + overrun,
            faults=faults,
            output_404_until=finish + cfg.scaled(cfg.faults.output_404_for)
            if faults.output_404
            else None,
            init_digest=init,
            mask_digest=mask,
            output_style=self._output_style(p),
            clock=self.clock,
        )
        self._next_id += 1
        self.jobs[job.id] = job
        self._by_prefix[prefix] = job
        self.stats.submissions_accepted += 1
        self.stats.accepted_by_fingerprint[(p.model_id, p.prompt, p.seed)] += 1
        counts = self._counts(key)
        counts.accepted += 1
        counts.images += p.samples
        if p.webhook is not None:
            self.webhooks.schedule(job, self._webhook_payload)
        return job

    def _output_style(self, params: GenerationParams) -> OutputStyle:
        # params.base64 is already False on v3, which takes no base64 at all.
        return self.config.base64_output if params.base64 else "url"

    async def _webhook_payload(self, job: Job) -> dict[str, Any]:
        output = [] if job.failed else await self.final_output(job)
        return bodies.webhook_payload(job, output)

    async def _answer_submission(self, job: Job, accepted_at: float) -> Reply:
        version = job.params.version
        # Decided from the acceptance time, not a fresh clock reading, so that the choice does
        # not depend on how long this process was preempted in between.
        if job.scheduled_finish - accepted_at > self.config.scaled(self.config.sync_window):
            return Reply(bodies.processing(job, version=version, eta=self.eta(job, accepted_at)))
        # Short jobs are answered when done, on the same request, as the service does.
        remaining = job.scheduled_finish - self.clock()
        if remaining > 0:
            await asyncio.sleep(remaining + 1e-6)
        if job.failed:
            return Reply(bodies.failed(job))
        output = await self.final_output(job)
        return Reply(
            bodies.success(job, version=version, output=output, links=self.config.proxy_links)
        )

    # -- input images ------------------------------------------------------------------------

    async def _load_inputs(
        self, params: GenerationParams, own_port: int | None
    ) -> tuple[str | None, str | None]:
        """Digests of the stored init and mask pictures (None where the endpoint takes none)."""
        errors: dict[str, list[str]] = {}
        digests: list[str | None] = []
        for field, value in (("init_image", params.init_image), ("mask_image", params.mask_image)):
            digest = None
            if value is not None:
                try:
                    digest = await self._load_input(params, field, value, own_port)
                except _BadImage as bad:
                    errors[field] = [f"The {field.replace('_', ' ')} {bad.reason}."]
            digests.append(digest)
        if errors:
            raise _Rejected(Reply(bodies.field_errors(errors), 400))
        return digests[0], digests[1]

    async def _load_input(
        self, params: GenerationParams, field: str, value: str, own_port: int | None
    ) -> str:
        if params.base64 and not value.lstrip().lower().startswith(("http://", "https://")):
            data = _decode_base64(value)
            if data is None:
                raise _BadImage("must be base64 image data")
        else:
            if is_loopback_url(value):
                data = await self._download(value, own_port)
                if data is None:
                    raise _BadImage("could not be downloaded")
            elif is_web_url(value):
                data = self._placeholder(field, value)
            else:
                raise _BadImage("must be an http(s) URL")
        problem = check_input_image(data)
        if problem is not None:
            raise _BadImage(problem)
        return self.images.put_blob(data)

    def _placeholder(self, field: str, url: str) -> bytes:
        """A sample picture standing in for an image on the internet: the emulator works
        offline, and examples name hosts such as example.com that serve no picture."""
        sample = PLACEHOLDERS[field]
        shown = str(yarl.URL(url).with_query(None).with_fragment(None))
        if shown not in self._placeholders_said:
            # Once per URL: a batch over one remote picture should not flood the log.
            self._placeholders_said.add(shown)
            log.warning(
                "%s %s is not on loopback: not fetched (the emulator works offline); "
                "the sample /samples/%s stands in for it",
                field,
                shown,
                sample,
            )
        data = self.images.sample(sample)
        assert data is not None, sample
        return data

    async def _download(self, url: str, own_port: int | None) -> bytes | None:
        parsed = yarl.URL(url)
        if own_port is not None and parsed.port == own_port:
            # Our own files: no need for a request to ourselves.
            name = parsed.path.rpartition("/")[2]
            if parsed.path.startswith("/samples/"):
                return self.images.sample(name)
            if parsed.path.startswith("/generations/"):
                return await self.output_file(name)
        assert self._session is not None, "start() the service first"
        try:
            async with self._session.get(url, timeout=_IMAGE_TIMEOUT) as resp:
                if resp.status != 200:
                    return None
                data = await resp.content.read(_MAX_DOWNLOAD + 1)
        except (aiohttp.ClientError, TimeoutError):
            return None
        return data if len(data) <= _MAX_DOWNLOAD else None

    # -- fetch -------------------------------------------------------------------------------

    async def fetch(self, body: Any, *, version: Version, path_id: str | None) -> Reply:
        try:
            key = self._check_key(body)
        except _Rejected as rejected:
            return rejected.reply
        raw = path_id if path_id is not None else body.get("request_id")
        if raw is None or raw == "":
            return Reply(
                bodies.field_errors({"request_id": ["The request id field is required."]}), 400
            )
        job_id = parse_request_id(raw)
        job = self.jobs.get(job_id) if job_id is not None else None
        # Another account's job is answered exactly like a missing one: ids are not secrets.
        if job is None or job.key != key:
            return Reply(bodies.REQUEST_NOT_FOUND, 400)
        now = self.clock()
        job.fetched_at.append(now)
        status = job.status_at(now)
        if status == "failed":
            return Reply(bodies.failed(job))
        if status == "success":
            output = await self.final_output(job)
            return Reply(
                bodies.success(
                    job,
                    version=version,
                    output=output,
                    fetched=True,
                    links=self.config.proxy_links,
                )
            )
        # One draw per processing answer, so the sequence for a seed does not depend on the rate.
        if self._idless_rng.random() < self.config.idless_processing_rate:
            self.stats.idless_processing += 1
            return Reply(dict(bodies.IDLESS_PROCESSING))
        return Reply(bodies.processing(job, version=version, eta=self.eta(job, now)))

    # -- account and models ------------------------------------------------------------------

    def system_load(self, body: Any) -> Reply:
        try:
            self._check_key(body)
        except _Rejected as rejected:
            return rejected.reply
        now = self.clock()
        return Reply(
            {
                "queue_num": self.farm.queue_num(now),
                "queue_time": round(self.farm.queue_time(now), 6),
                "status": "ok",
            }
        )

    def wallet_balance(self, body: Any) -> Reply:
        try:
            key = self._check_key(body)
        except _Rejected as rejected:
            return rejected.reply
        return Reply(bodies.wallet_balance(self.accounts.balance(key)))

    def request_count(self, body: Any) -> Reply:
        """How many of the key's jobs hold a queue slot (queued or processing) now; at most
        30 calls a minute per key (service minutes), else 429 with ``retry_after``."""
        try:
            key = self._check_key(body)
        except _Rejected as rejected:
            return rejected.reply
        now = self.clock()
        wait = self.accounts.request_count_wait(key, now)
        if wait > 0:
            self.stats.request_count_throttled += 1
            self._counts(key).request_count_throttled += 1
            return Reply(bodies.too_many_requests(wait), 429, retry_after=wait)
        return Reply(bodies.request_count(self.farm.slots_in_use(key, now)))

    def model_list(self, body: Any) -> Reply:
        try:
            self._check_key(body)
        except _Rejected as rejected:
            return rejected.reply
        now = self.clock()
        return Reply(
            [
                {
                    "model_id": model_id,
                    "status": self.farm.model_status(model_id, now),
                    "model_name": model_id.replace("-", " ").title(),
                    "model_category": "stable_diffusion",
                }
                for model_id in self.farm.model_ids()
            ]
        )

    def model_reload(self, body: Any) -> Reply:
        try:
            self._check_key(body)
        except _Rejected as rejected:
            return rejected.reply
        model_id = body.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            return Reply(
                bodies.field_errors({"model_id": ["The model id field is required."]}), 400
            )
        if not self.farm.knows(model_id):
            return Reply(bodies.MODEL_NOT_FOUND, 400)
        now = self.clock()
        load = self.config.scaled(self.config.cold_start)
        self.farm.reload(model_id, now, load)
        return Reply(
            {
                "status": "success",
                "message": "Model reload started",
                "model_id": model_id,
                "eta": round(load, 6),
            }
        )

    # -- files -------------------------------------------------------------------------------

    async def final_output(self, job: Job) -> list[str]:
        """A finished job's ``output`` in its style: file links, ``.base64`` links, or the
        images themselves in base64 (the same bytes as the files)."""
        style = job.output_style
        if style == "url":
            return job.output_urls()
        if style == "link":
            return job.base64_link_urls()
        prefix = f"data:{_MIME[job.extension]};base64," if style == "data_url" else ""
        names = job.output_names()
        datas = await asyncio.gather(*(self._render(job, n, name) for n, name in enumerate(names)))
        return [prefix + base64.b64encode(data).decode("ascii") for data in datas]

    async def output_file(self, name: str) -> bytes | None:
        """The file's bytes, or None while it must answer 404. A name ending in ``.base64``
        gives the file's base64 text instead (as ASCII bytes)."""
        if name.endswith(BASE64_SUFFIX):
            data = await self._output_file(name.removesuffix(BASE64_SUFFIX))
            return None if data is None else base64.b64encode(data)
        return await self._output_file(name)

    async def _output_file(self, name: str) -> bytes | None:
        prefix, _, rest = name.rpartition("-")
        job = self._by_prefix.get(prefix)
        index_text, _, extension = rest.partition(".")
        if job is None or extension != job.extension or not index_text.isdigit():
            return None
        index = int(index_text)
        now = self.clock()
        if index >= job.params.samples or job.status_at(now) != "success":
            return None
        if job.output_404_until is not None and now < job.output_404_until:
            return None
        return await self._render(job, index, name)

    async def _render(self, job: Job, index: int, name: str) -> bytes:
        p = job.params
        spec = RenderSpec(
            seed=job.seed,
            prompt=p.prompt,
            model_id=p.model_id,
            index=index,
            width=p.width,
            height=p.height,
            fmt=job.extension,
            strength=p.strength if p.kind != "text2img" else 1.0,
            init=self.images.blob(job.init_digest),
            mask=self.images.blob(job.mask_digest),
        )
        return await self.images.get(name, lambda: asyncio.to_thread(render, spec))


_MIME = {"png": "image/png", "jpg": "image/jpeg"}


def _decode_base64(value: str) -> bytes | None:
    text = value.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None
