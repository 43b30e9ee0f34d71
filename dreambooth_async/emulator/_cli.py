"""``python -m dreambooth_async.emulator``: the argument parser, and a ``run`` the CLI reuses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence

from ._config import DEFAULT_KEY, DEFAULT_MODELS, CostModel, EmulatorConfig, FaultConfig
from ._emulator import Emulator


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


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The emulator's options. Pass a parser (say, a subcommand's) to add them to it."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="python -m dreambooth_async.emulator",
            description="A local emulator of the Dreambooth API. Durations are service seconds; "
            "--time-scale turns them into real seconds.",
        )
    d = EmulatorConfig()
    f = FaultConfig()
    c = CostModel()
    add = parser.add_argument
    add("--host", default=d.host, help="address to listen on (default %(default)s)")
    add("--port", type=int, default=7860, help="port; 0 picks a free one (default %(default)s)")
    add(
        "--key",
        action="append",
        dest="keys",
        metavar="KEY",
        help=f"an API key to accept; repeat for several accounts (default {DEFAULT_KEY})",
    )
    add(
        "--queue-limit",
        type=int,
        default=d.queue_limit,
        help="jobs queued or running per key (default %(default)s)",
    )
    add(
        "--key-queue-limit",
        action="append",
        dest="key_queue_limits",
        type=_per_key(int),
        metavar="KEY=N",
        help="queue slots of one key, instead of --queue-limit; repeat per key (default: none)",
    )
    add("--workers", type=int, default=d.workers, help="simulated GPU workers")
    add(
        "--time-scale",
        type=float,
        default=d.time_scale,
        help="real seconds per service second: 0.01 makes a 30 s job take 0.3 s",
    )
    add(
        "--sync-window",
        type=float,
        default=d.sync_window,
        help="jobs done within this many seconds answer success at once",
    )
    add("--eta-bias", type=float, default=d.eta_bias)
    add("--eta-noise", type=float, default=d.eta_noise)
    add("--eta-noise-kind", choices=("normal", "uniform"), default=d.eta_noise_kind)
    add("--models", type=_names, default=DEFAULT_MODELS, help="comma-separated model ids")
    add("--cold-models", type=_names, default=(), help="comma-separated models that start cold")
    add("--cold-start", type=float, default=d.cold_start, help="model load time")
    add("--http-errors", action="store_true", help="errors as 4xx/5xx instead of HTTP 200")
    add("--spam-filter", type=_on_off, default=d.spam_filter, metavar="on|off")
    add("--spam-window", type=float, default=d.spam_window)
    add("--image-format", choices=("png", "jpg"), default=d.image_format)
    add("--webhook-drop-rate", type=float, default=d.webhook_drop_rate)
    add("--webhook-duplicate-rate", type=float, default=d.webhook_duplicate_rate)
    add("--webhook-delay", type=float, default=d.webhook_delay)
    add("--seed", type=int, default=d.seed, help="seed for costs, ETAs, ids and webhooks")
    add("--cost-base", type=float, default=c.base)
    add("--cost-per-step", type=float, default=c.per_step)
    add("--cost-per-sample", type=float, default=c.per_sample)
    add("--cost-per-megapixel", type=float, default=c.per_megapixel)
    add("--cost-noise", type=float, default=c.noise)
    add("--fault-seed", type=int, default=f.seed)
    add("--fault-5xx", type=float, default=f.rate_5xx)
    add("--fault-drop-before", type=float, default=f.rate_drop_before)
    add("--fault-drop-after", type=float, default=f.rate_drop_after)
    add("--fault-slow", type=float, default=f.rate_slow)
    add("--slow-delay", type=float, default=f.slow_delay)
    add("--fault-429", type=float, default=f.rate_429)
    add("--retry-after-429", type=float, default=f.retry_after_429)
    add("--fault-failed", type=float, default=f.rate_failed)
    add("--fault-stuck", type=float, default=f.rate_stuck)
    add("--stuck-extra", type=float, default=f.stuck_extra)
    add("--fault-output-404", type=float, default=f.rate_output_404)
    add("--output-404-for", type=float, default=f.output_404_for)
    add(
        "--idless-processing-rate",
        type=float,
        default=d.idless_processing_rate,
        help="probability that a fetch of a running job answers the docs' id-less "
        '{"status": "processing", "messege": "try again later.", "output": "", ...} '
        "(default %(default)s)",
    )
    add(
        "--base64-output",
        choices=("data_url", "bare", "link"),
        default=d.base64_output,
        help='how jobs asked with "base64": "yes" give their images: data URLs, bare base64, '
        "or links to .base64 text (default %(default)s)",
    )
    add(
        "--wallet",
        type=_optional_float,
        default=d.wallet,
        metavar="AMOUNT|unlimited",
        help="starting balance of every key in USD; a submission it cannot pay answers 402 "
        "(default unlimited)",
    )
    add(
        "--key-wallet",
        action="append",
        dest="key_wallets",
        type=_per_key(float),
        metavar="KEY=AMOUNT",
        help="starting balance of one key, instead of --wallet; repeat per key (default: none)",
    )
    add(
        "--price-per-image",
        type=float,
        default=d.price_per_image,
        help="what each image draws from the wallet at acceptance (default %(default)s)",
    )
    add(
        "--premium-models",
        type=_names,
        default=d.premium_models,
        metavar="MODELS",
        help="comma-separated model ids that answer 403, not on the plan (default: none)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The configuration the parsed options describe (raises ValueError on bad values)."""
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        keys=args.keys or (DEFAULT_KEY,),
        queue_limit=args.queue_limit,
        workers=args.workers,
        time_scale=args.time_scale,
        cost=CostModel(
            base=args.cost_base,
            per_step=args.cost_per_step,
            per_sample=args.cost_per_sample,
            per_megapixel=args.cost_per_megapixel,
            noise=args.cost_noise,
        ),
        sync_window=args.sync_window,
        eta_bias=args.eta_bias,
        eta_noise=args.eta_noise,
        eta_noise_kind=args.eta_noise_kind,
        models=args.models,
        cold_models=args.cold_models,
        cold_start=args.cold_start,
        http_errors=args.http_errors,
        spam_filter=args.spam_filter,
        spam_window=args.spam_window,
        image_format=args.image_format,
        webhook_drop_rate=args.webhook_drop_rate,
        webhook_duplicate_rate=args.webhook_duplicate_rate,
        webhook_delay=args.webhook_delay,
        seed=args.seed,
        idless_processing_rate=args.idless_processing_rate,
        base64_output=args.base64_output,
        wallet=args.wallet,
        key_wallets=dict(args.key_wallets or ()),
        price_per_image=args.price_per_image,
        premium_models=args.premium_models,
        key_queue_limits={key: int(limit) for key, limit in args.key_queue_limits or ()},
        faults=FaultConfig(
            seed=args.fault_seed,
            rate_5xx=args.fault_5xx,
            rate_drop_before=args.fault_drop_before,
            rate_drop_after=args.fault_drop_after,
            rate_slow=args.fault_slow,
            slow_delay=args.slow_delay,
            rate_429=args.fault_429,
            retry_after_429=args.retry_after_429,
            rate_failed=args.fault_failed,
            rate_stuck=args.fault_stuck,
            stuck_extra=args.stuck_extra,
            rate_output_404=args.fault_output_404,
            output_404_for=args.output_404_for,
        ),
    )


async def run(config: EmulatorConfig, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM (or until ``stop`` is set), after printing where."""
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
            print(f"key: {emulator.key}", flush=True)
            await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    try:
        asyncio.run(run(config))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, say
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
