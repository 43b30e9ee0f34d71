"""``python -m dreambooth_async.emulator``: the argument parser, and a ``run`` the CLI reuses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .._settings import TIME_SCALE_HELP
from ._app import log
from ._config import (
    DEFAULT_KEY,
    DEFAULT_MODELS,
    ConfigError,
    CostModel,
    EmulatorConfig,
    FaultConfig,
)
from ._emulator import Emulator

_T = TypeVar("_T")


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _optional_float(text: str) -> float | None:
    if text.strip().lower() in ("none", "unlimited", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or 'unlimited', got {text!r}"
        ) from None


def _per_key(convert: Callable[[str], float]) -> Callable[[str], tuple[str, float]]:
    """``KEY=VALUE``; the last ``=`` splits, so a key may hold one."""

    def parse(text: str) -> tuple[str, float]:
        key, sep, value = text.rpartition("=")
        if not sep:
            # Never echo the text: it holds a key.
            raise argparse.ArgumentTypeError("expected KEY=VALUE")
        try:
            return key, convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError("expected KEY=VALUE with a number") from None

    return parse


class _Repeated(argparse.Action):
    """Like ``append``, except that the first use replaces the default list instead of adding
    to it: ``--key a`` accepts ``a`` only, and ``--help`` shows the real default."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        so_far = getattr(namespace, self.dest)
        fresh = so_far is self.default or so_far is None
        setattr(namespace, self.dest, [*([] if fresh else so_far), values])


class _DefaultsShown(argparse.HelpFormatter):
    """Ends the help of each option that takes a value with ``(default X)``; a list default
    reads as the comma-separated text the option takes, or ``none``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or action.default is argparse.SUPPRESS:
            return action.help
        return f"{action.help or ''} (default %(default)s)".strip()

    def _expand_help(self, action: argparse.Action) -> str:
        if isinstance(action.default, tuple | list):
            action = copy.copy(action)  # the parser's own action keeps its default
            action.default = ",".join(map(str, action.default)) or "none"
        return super()._expand_help(action)


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The emulator's options. Pass a parser (say, a subcommand's) to add them to it.

    Help texts leave the defaults to the formatter (``dreambooth-async emulator`` has one of its
    own), which shows a list as the comma-separated text the option takes.
    """
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="python -m dreambooth_async.emulator",
            description="A local emulator of the Dreambooth API. Durations are service seconds; "
            "--time-scale turns them into real seconds.",
            formatter_class=_DefaultsShown,
        )
    d = EmulatorConfig()
    f = FaultConfig()
    c = CostModel()
    add = parser.add_argument
    add("--host", default=d.host, help="address to listen on")
    add("--port", type=int, default=7860, help="port; 0 picks a free one")
    add(
        "--key",
        action=_Repeated,
        default=[DEFAULT_KEY],
        dest="keys",
        metavar="KEY",
        help="an API key to accept; repeat for several accounts",
    )
    add(
        "--queue-limit",
        type=int,
        default=d.queue_limit,
        help="jobs queued or running per key",
    )
    add(
        "--key-queue-limit",
        action="append",
        default=[],
        dest="key_queue_limits",
        type=_per_key(int),
        metavar="KEY=N",
        help="queue slots of one key, instead of --queue-limit; repeat per key",
    )
    add(
        "--queue-full-retry-after",
        type=_optional_float,
        default=d.queue_full_retry_after,
        metavar="SECONDS",
        help="the retry_after a queue-full answer suggests (service seconds); "
        "none: the exact wait until one of the key's slots frees",
    )
    add("--workers", type=int, default=d.workers, help="simulated GPU workers")
    add(
        "--time-scale",
        type=float,
        default=d.time_scale,
        help=TIME_SCALE_HELP,
    )
    add(
        "--sync-window",
        type=float,
        default=d.sync_window,
        help="jobs done within this many seconds answer success at once",
    )
    add(
        "--eta-bias",
        type=float,
        default=d.eta_bias,
        help="relative error of every reported eta: 0.5 says 50%% longer than the job takes, "
        "-0.5 half as long; above -1",
    )
    add(
        "--eta-noise",
        type=float,
        default=d.eta_noise,
        help="random error of each reported eta, relative (see --eta-noise-kind)",
    )
    add(
        "--eta-noise-kind",
        choices=("normal", "uniform"),
        default=d.eta_noise_kind,
        help="normal: --eta-noise is a standard deviation; uniform: the eta is off by up to "
        "--eta-noise either way",
    )
    add(
        "--models",
        type=_names,
        default=DEFAULT_MODELS,
        metavar="MODELS",
        help="comma-separated model ids the service knows",
    )
    add(
        "--cold-models",
        type=_names,
        default=d.cold_models,
        metavar="MODELS",
        help="comma-separated models (of --models) that start cold and load for --cold-start",
    )
    add(
        "--cold-start",
        type=float,
        default=d.cold_start,
        help="how long a cold model takes to load",
    )
    add(
        "--http-errors",
        action="store_true",
        help="errors as 4xx/5xx instead of HTTP 200 with an error body",
    )
    add(
        "--spam-filter",
        type=_on_off,
        default="on" if d.spam_filter else "off",
        metavar="on|off",
        help="refuse a submission identical to one accepted within --spam-window, as the "
        "service does",
    )
    add(
        "--spam-window",
        type=float,
        default=d.spam_window,
        help="how long the spam filter remembers an accepted submission",
    )
    add(
        "--image-format",
        choices=("png", "jpg"),
        default=d.image_format,
        help="format of the images jobs make",
    )
    add(
        "--webhook-drop-rate",
        type=float,
        default=d.webhook_drop_rate,
        help="probability that a job's webhook is never sent",
    )
    add(
        "--webhook-duplicate-rate",
        type=float,
        default=d.webhook_duplicate_rate,
        help="probability that a job's webhook is sent twice",
    )
    add(
        "--webhook-delay",
        type=float,
        default=d.webhook_delay,
        help="how long after its job finishes a webhook is sent",
    )
    add(
        "--seed",
        type=int,
        default=d.seed,
        help="seed for costs, ETAs, ids and webhooks",
    )
    add(
        "--cost-base",
        type=float,
        default=c.base,
        help="seconds every job takes on a worker, whatever its size",
    )
    add(
        "--cost-per-step",
        type=float,
        default=c.per_step,
        help="seconds added per inference step",
    )
    add(
        "--cost-per-sample",
        type=float,
        default=c.per_sample,
        help="seconds added per image of the job",
    )
    add(
        "--cost-per-megapixel",
        type=float,
        default=c.per_megapixel,
        help="seconds added per megapixel of each image",
    )
    add(
        "--cost-noise",
        type=float,
        default=c.noise,
        help="relative standard deviation of job durations",
    )
    add(
        "--fault-seed",
        type=int,
        default=f.seed,
        help="seed of the fault draws, apart from --seed",
    )
    # Request-level faults: slices of one draw per submission or fetch, so their --fault-*
    # rates add up to at most 1.
    add(
        "--fault-5xx",
        type=float,
        default=f.rate_5xx,
        help="probability that a submission or fetch answers 502 or 503 with an HTML page, "
        "unprocessed",
    )
    add(
        "--fault-drop-before",
        type=float,
        default=f.rate_drop_before,
        help="probability that a submission or fetch has its connection closed before it is "
        "processed",
    )
    add(
        "--fault-drop-after",
        type=float,
        default=f.rate_drop_after,
        help="probability that a submission or fetch is processed (a job accepted) and its "
        "connection then closed with no answer",
    )
    add(
        "--fault-slow",
        type=float,
        default=f.rate_slow,
        help="probability that an answer leaves --slow-delay late",
    )
    add(
        "--slow-delay",
        type=float,
        default=f.slow_delay,
        help="how late --fault-slow answers are",
    )
    add(
        "--fault-429",
        type=float,
        default=f.rate_429,
        help="probability that a submission or fetch answers 429 with Retry-After, unprocessed",
    )
    add(
        "--retry-after-429",
        type=float,
        default=f.retry_after_429,
        help="the wait --fault-429 answers ask for",
    )
    # Job-level faults: drawn once per accepted job.
    add(
        "--fault-failed",
        type=float,
        default=f.rate_failed,
        help="probability that an accepted job ends failed",
    )
    add(
        "--fault-stuck",
        type=float,
        default=f.rate_stuck,
        help="probability that a job runs --stuck-extra past its eta",
    )
    add(
        "--stuck-extra",
        type=float,
        default=f.stuck_extra,
        help="how much longer --fault-stuck jobs run",
    )
    add(
        "--fault-output-404",
        type=float,
        default=f.rate_output_404,
        help="probability that a finished job's image files answer 404 for --output-404-for ",
    )
    add(
        "--output-404-for",
        type=float,
        default=f.output_404_for,
        help="how long --fault-output-404 files stay missing",
    )
    add(
        "--idless-processing-rate",
        type=float,
        default=d.idless_processing_rate,
        help="probability that a fetch of a running job answers the docs' id-less "
        '{"status": "processing", "messege": "try again later.", "output": "", ...} ',
    )
    add(
        "--base64-output",
        choices=("data_url", "bare", "link"),
        default=d.base64_output,
        help='how jobs asked with "base64": "yes" give their images: data URLs, bare base64, '
        "or links to .base64 text",
    )
    add(
        "--proxy-links",
        choices=("list", "object", "empty"),
        default=d.proxy_links,
        help="how a v6/v7 success gives proxy_links: a list of URLs, an object of URLs by "
        'image number ({"0": "https://..."}), or ""',
    )
    add(
        "--wallet",
        type=_optional_float,
        default="unlimited" if d.wallet is None else str(d.wallet),
        metavar="AMOUNT|unlimited",
        help="starting balance of each key in USD; a submission it cannot pay answers 402",
    )
    add(
        "--key-wallet",
        action="append",
        default=[],
        dest="key_wallets",
        type=_per_key(float),
        metavar="KEY=AMOUNT",
        help="starting balance of one key, instead of --wallet; repeat per key",
    )
    add(
        "--price-per-image",
        type=float,
        default=d.price_per_image,
        help="what each image draws from the wallet at acceptance",
    )
    add(
        "--premium-models",
        type=_names,
        default=d.premium_models,
        metavar="MODELS",
        help="comma-separated model ids that answer 403, not on the plan",
    )
    add(
        "-v",
        "--verbose",
        # The dreambooth-async CLI reads this dest too: its emulator subcommand shares these
        # options, and its logging set-up adds this count to its own -v.
        dest="emulator_verbose",
        action="count",
        default=0,
        help="log each request (method, path, HTTP status, time taken) to stderr; -vv adds "
        "the faults drawn and the answers given; never a body, header or query string, where "
        "the key travels",
    )
    return parser


# Which option sets each field of the configuration classes. config_from_args reads the options
# through these tables, so that an error about a field names the option that set it.
_COST_OPTIONS = {
    "base": "--cost-base",
    "per_step": "--cost-per-step",
    "per_sample": "--cost-per-sample",
    "per_megapixel": "--cost-per-megapixel",
    "noise": "--cost-noise",
}
_FAULT_OPTIONS = {
    "seed": "--fault-seed",
    "rate_5xx": "--fault-5xx",
    "rate_drop_before": "--fault-drop-before",
    "rate_drop_after": "--fault-drop-after",
    "rate_slow": "--fault-slow",
    "slow_delay": "--slow-delay",
    "rate_429": "--fault-429",
    "retry_after_429": "--retry-after-429",
    "rate_failed": "--fault-failed",
    "rate_stuck": "--fault-stuck",
    "stuck_extra": "--stuck-extra",
    "rate_output_404": "--fault-output-404",
    "output_404_for": "--output-404-for",
}
_EMULATOR_OPTIONS = {
    name: "--" + name.replace("_", "-")
    for name in (
        "host",
        "port",
        "queue_limit",
        "queue_full_retry_after",
        "workers",
        "time_scale",
        "sync_window",
        "eta_bias",
        "eta_noise",
        "eta_noise_kind",
        "models",
        "cold_models",
        "cold_start",
        "http_errors",
        "spam_filter",
        "spam_window",
        "image_format",
        "webhook_drop_rate",
        "webhook_duplicate_rate",
        "webhook_delay",
        "seed",
        "idless_processing_rate",
        "base64_output",
        "proxy_links",
        "wallet",
        "price_per_image",
        "premium_models",
    )
} | {"keys": "--key", "key_wallets": "--key-wallet", "key_queue_limits": "--key-queue-limit"}
# The repeatable options gather into a plural dest, as the configuration's field.
_DESTS = {"--key": "keys", "--key-wallet": "key_wallets", "--key-queue-limit": "key_queue_limits"}


class OptionError(ValueError):
    """A configuration the command line describes that the emulator cannot use, in the words
    of the command line: ``options`` are the options at fault, ``reason`` says why.

    ``str()`` is a sentence (``--queue-limit must be >= 1 (got 0)``); ``usage_text()`` is the
    ``--queue-limit: must be >= 1 (got 0)`` form that ``main`` prints.
    """

    def __init__(self, options: Sequence[str], reason: str) -> None:
        self.options = tuple(options)
        self.reason = reason
        super().__init__(f"{' + '.join(self.options)} {reason}" if self.options else reason)

    def usage_text(self) -> str:
        return f"{', '.join(self.options)}: {self.reason}" if self.options else self.reason


def _read(args: argparse.Namespace, options: Mapping[str, str]) -> dict[str, Any]:
    return {
        field: getattr(args, _DESTS.get(option, option[2:].replace("-", "_")))
        for field, option in options.items()
    }


def _build(make: Callable[..., _T], options: Mapping[str, str], values: dict[str, Any]) -> _T:
    """``make(**values)``, its errors put in the words of the options that gave the values."""

    def option(field: str) -> str:
        return options.get(field, field)

    try:
        return make(**values)
    except ConfigError as exc:
        raise OptionError([option(field) for field in exc.fields], exc.explain(option)) from exc
    except (ValueError, TypeError) as exc:
        # Every validator of the configuration raises ConfigError; anything else is a bug, but
        # still an error in the values given rather than a traceback.
        raise OptionError((), str(exc)) from exc


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The configuration the parsed options describe. Raises OptionError (a ValueError) naming
    the options at fault when the values cannot be used."""
    cost = _build(CostModel, _COST_OPTIONS, _read(args, _COST_OPTIONS))
    faults = _build(FaultConfig, _FAULT_OPTIONS, _read(args, _FAULT_OPTIONS))
    values = _read(args, _EMULATOR_OPTIONS)
    # A namespace from a parser of earlier versions may hold None for the repeatable options.
    values["keys"] = values["keys"] or (DEFAULT_KEY,)
    values["key_wallets"] = dict(values["key_wallets"] or ())
    values["key_queue_limits"] = {
        key: int(limit) for key, limit in values["key_queue_limits"] or ()
    }
    return _build(EmulatorConfig, _EMULATOR_OPTIONS, {**values, "cost": cost, "faults": faults})


async def run(config: EmulatorConfig, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM (or until ``stop`` is set), after printing where and
    every key it accepts (``key: K``, a line each)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available on every platform or outside the main thread; Ctrl-C still works then.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        async with Emulator(config) as emulator:
            print(f"base_url: {emulator.base_url}", flush=True)
            # Every key it accepts, one a line: a client may use any of them.
            for key in config.keys:
                print(f"key: {key}", flush=True)
            await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _configure_logging(verbosity: int) -> None:
    if verbosity <= 0:
        return
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Only the emulator's own logger gets chattier; other libraries keep their warnings level.
    log.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except OptionError as exc:
        parser.error(exc.usage_text())  # exit 2
    _configure_logging(args.emulator_verbose)
    try:
        asyncio.run(run(config))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, say
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
