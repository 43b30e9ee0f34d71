"""The emulator plays ModelsLab's service as its current docs show it (issues 11 and 15): v7 paths,
the id-less processing answer of fetch, base64 outputs, 402/403 and wallets, per-key queue limits,
the account endpoints, meta by version, and the records tests read. Raw HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from typing import Any, Literal

import aiohttp
import pytest
from _emulator_fixtures import KEY, get, picture, post, text2img, wait_for, webhook_receiver

from dreambooth_async.emulator import (
    CostModel,
    Emulator,
    EmulatorConfig,
    EmulatorStats,
    build_arg_parser,
    config_from_args,
    serve,
)

pytestmark = pytest.mark.anyio

FAST = 0.01  # a 7-second job takes 70 ms
# Where a test must see a job still running after a few requests: 0.7 s, time enough on a
# loaded machine, short enough to wait for.
RUNNING = 0.1
SLOW = 1.0  # jobs outlast the test: they stay queued or processing
META_FIELDS = {"seed", "W", "H", "steps", "guidance_scale", "scheduler", "prompt", "model_id"}
IDLESS = {
    "status": "processing",
    "messege": "try again later.",
    "output": "",
    "tip": "for faster speed, keep resolution upto 512x512",
}
NO_CREDITS = {
    "status": "error",
    "message": "Insufficient credits. Please add more credits to continue.",
}
PREMIUM = {"status": "error", "message": "This feature requires a premium subscription"}


def v7_body(prompt: str = "a red apple on a white table", **fields: Any) -> dict[str, Any]:
    """A text-to-image body as the v7 docs write it: numbers as JSON numbers."""
    body: dict[str, Any] = {
        "model_id": "midjourney",
        "prompt": prompt,
        "width": 512,
        "height": 512,
        "samples": 1,
        "num_inference_steps": 30,
        "seed": 11,
    }
    body.update(fields)
    return body


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """Any method, a JSON body or none, optional headers: status, decoded JSON, headers."""
    async with http.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def job_files(http: aiohttp.ClientSession, base_url: str, job_id: int) -> list[bytes]:
    """The bytes of a job's image files, found through the admin route (not the answer)."""
    async with http.get(f"{base_url}/_emulator/jobs/{job_id}") as resp:
        state = await resp.json()
    files = []
    for url in state["output"]:
        status, data = await get(http, url)
        assert status == 200
        files.append(data)
    return files


def decoded(text: str) -> bytes:
    """The bytes of a data URL or bare base64; raises if the text is neither."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        assert header.endswith(";base64")
    return base64.b64decode(text, validate=True)


async def stats_json(http: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    async with http.get(f"{base_url}/_emulator/stats") as resp:
        result: dict[str, Any] = await resp.json()
        return result


# -- 1. v7 paths, the key header, fetch paths and fetch_result by version ------------------------


async def test_v7_paths_numbers_key_header_and_fetch_result() -> None:
    config = EmulatorConfig(time_scale=RUNNING, sync_window=0, spam_filter=False)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        header = {"key": KEY}
        # The key in a header, the body without one; numbers as JSON numbers.
        status, answer, _ = await send(
            http, "POST", f"{base}/api/v7/images/text-to-image", v7_body(), headers=header
        )
        assert status == 200
        assert answer["status"] == "processing", answer
        job_id = answer["id"]
        assert answer["fetch_result"] == f"{base}/api/v7/images/fetch/{job_id}"
        assert "message" in answer and "messege" not in answer
        assert answer["meta"]["steps"] == 30  # v7 runs what it is asked (v6 caps at 20)
        # Fetch by path, the key in the header and no body at all.
        status, fetched, _ = await send(http, "POST", answer["fetch_result"], headers=header)
        assert (status, fetched["status"], fetched["id"]) == (200, "processing", job_id)
        await emu.wait_finished(job_id)
        _, done, _ = await send(http, "POST", answer["fetch_result"], {"key": KEY})
        assert done["status"] == "success" and done["id"] == job_id
        assert emu.jobs[job_id].params.version == "v7"

        # The other two v7 endpoints; numbers as strings are accepted too, and inpaint reads
        # num_inference_steps on v7.
        photo = f"{base}/samples/inpaint-photo.png"
        mask = f"{base}/samples/inpaint-mask.png"
        _, i2i, _ = await post(
            http,
            f"{base}/api/v7/images/image-to-image",
            v7_body(key=KEY, init_image=photo, strength=0.5, width="256", height="256"),
        )
        assert i2i["status"] == "processing", i2i
        assert (i2i["meta"]["W"], i2i["meta"]["init_image"]) == (256, photo)
        _, inpaint, _ = await post(
            http,
            f"{base}/api/v7/images/inpaint",
            v7_body(key=KEY, init_image=photo, mask_image=mask, num_inference_steps=12),
        )
        assert inpaint["status"] == "processing", inpaint
        assert inpaint["meta"]["steps"] == 12
        assert inpaint["fetch_result"].startswith(f"{base}/api/v7/images/fetch/")

        # A key in the body wins over the header; no key anywhere is an invalid key.
        _, wrong, _ = await send(
            http,
            "POST",
            f"{base}/api/v7/images/text-to-image",
            v7_body(key="not-a-key"),
            headers=header,
        )
        assert wrong["message"] == "Invalid Api Key"
        _, none, _ = await send(http, "POST", f"{base}/api/v7/images/text-to-image", v7_body())
        assert none["message"] == "Invalid Api Key"


async def test_v6_fetch_by_path_and_by_body_and_fetch_result_by_version() -> None:
    config = EmulatorConfig(time_scale=FAST, sync_window=0, spam_filter=False)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        expected = {
            "/api/v3/dreambooth": "/api/v3/dreambooth/fetch/",
            "/api/v4/dreambooth": "/api/v3/dreambooth/fetch/",  # the legacy service does so
            "/api/v6/images/text2img": "/api/v6/images/fetch/",
            "/api/v7/images/text-to-image": "/api/v7/images/fetch/",
        }
        for path, fetch_path in expected.items():
            _, answer, _ = await post(http, base + path, text2img(path))
            assert answer["fetch_result"] == f"{base}{fetch_path}{answer['id']}"
        _, v6, _ = await post(http, f"{base}/api/v6/images/text2img", text2img("v6 again"))
        await emu.wait_finished(v6["id"])
        _, by_path, _ = await post(http, f"{base}/api/v6/images/fetch/{v6['id']}", {"key": KEY})
        _, by_body, _ = await post(
            http, f"{base}/api/v6/images/fetch", {"key": KEY, "request_id": str(v6["id"])}
        )
        assert by_path == by_body
        assert by_path["status"] == "success"


# -- 2. the docs' id-less processing answer of fetch --------------------------------------------


async def test_fetch_answers_the_idless_processing_shape_at_its_seeded_rate() -> None:
    async def pattern(rate: float, seed: int) -> list[bool]:
        config = EmulatorConfig(
            time_scale=SLOW, sync_window=0, idless_processing_rate=rate, seed=seed
        )
        async with Emulator(config) as emu, aiohttp.ClientSession() as http:
            _, answer, _ = await post(http, f"{emu.base_url}/api/v6/images/text2img", text2img())
            assert answer["status"] == "processing" and "meta" in answer
            seen = []
            for _ in range(40):
                _, fetched, _ = await post(http, answer["fetch_result"], {"key": KEY})
                if "id" in fetched:
                    assert fetched["status"] == "processing" and fetched["id"] == answer["id"]
                    assert "eta" in fetched and "meta" in fetched
                    seen.append(False)
                else:
                    # Exactly the docs' shape: no id, no eta, no meta.
                    assert fetched == IDLESS
                    seen.append(True)
            assert emu.stats.idless_processing == sum(seen)
            return seen

    assert await pattern(1.0, 0) == [True] * 40
    assert await pattern(0.0, 0) == [False] * 40
    half = await pattern(0.5, 3)
    assert 5 < sum(half) < 35
    assert await pattern(0.5, 3) == half  # deterministic from the seed
    assert await pattern(0.5, 4) != half


async def test_idless_answers_only_while_processing_never_for_a_finished_job() -> None:
    config = EmulatorConfig(time_scale=RUNNING, sync_window=0, idless_processing_rate=1.0)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img())
        _, fetched, _ = await post(http, answer["fetch_result"], {"key": KEY})
        assert fetched == IDLESS
        await emu.wait_finished(answer["id"])
        _, done, _ = await post(http, answer["fetch_result"], {"key": KEY})
        assert done["status"] == "success" and done["id"] == answer["id"]


# -- 3. base64 outputs ------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["data_url", "bare", "link"])
async def test_base64_outputs_decode_to_the_image_files(
    style: Literal["data_url", "bare", "link"],
) -> None:
    config = EmulatorConfig(time_scale=FAST, sync_window=0, spam_filter=False, base64_output=style)
    async with (
        Emulator(config) as emu,
        aiohttp.ClientSession() as http,
        webhook_receiver(lambda calls: len(calls) >= 1) as receiver,
    ):
        base = emu.base_url
        body = text2img(base64="yes", samples=2, webhook=receiver.url)
        _, answer, _ = await post(http, f"{base}/api/v6/images/text2img", body)
        assert answer["status"] == "processing"
        job_id = answer["id"]
        await emu.wait_finished(job_id)
        _, fetched, _ = await post(http, answer["fetch_result"], {"key": KEY})
        await wait_for(receiver.done)
        [hooked] = receiver.calls
        files = await job_files(http, base, job_id)
        assert len(files) == 2 and all(data.startswith(b"\x89PNG\r\n\x1a\n") for data in files)
        for output in (fetched["output"], hooked["output"]):
            assert len(output) == 2
            if style == "link":
                assert all(link.endswith(".base64") for link in output)
                assert answer["future_links"] == output
                images = []
                for link in output:
                    async with http.get(link) as resp:
                        assert resp.status == 200
                        images.append(base64.b64decode(await resp.text(), validate=True))
            else:
                prefixed = [text.startswith("data:image/png;base64,") for text in output]
                assert prefixed == [style == "data_url"] * 2
                images = [decoded(text) for text in output]
            assert images == files
            assert picture(images[0]).size == (512, 512)


async def test_base64_output_in_a_synchronous_answer_and_as_jpeg() -> None:
    config = EmulatorConfig(time_scale=0.001, sync_window=10_000, image_format="jpg")
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        _, answer, _ = await post(http, f"{base}/api/v4/dreambooth", text2img(base64="yes"))
        assert answer["status"] == "success"
        [text] = answer["output"]
        assert text.startswith("data:image/jpeg;base64,")
        assert decoded(text)[:3] == b"\xff\xd8\xff"
        assert [decoded(text)] == await job_files(http, base, answer["id"])
        # Without base64: links, as before; and v3 takes no base64 at all.
        _, plain, _ = await post(http, f"{base}/api/v6/images/text2img", text2img("plain"))
        _, legacy, _ = await post(http, f"{base}/api/v3/dreambooth", text2img("v3", base64="yes"))
        for result in (plain, legacy):
            assert result["output"][0].startswith(f"{base}/generations/")
            with pytest.raises(binascii.Error):
                base64.b64decode(result["output"][0], validate=True)


# -- 4. 402 and 403 ----------------------------------------------------------------------------


@pytest.mark.parametrize("http_errors", [False, True])
async def test_wallets_draw_per_image_and_refuse_with_402(http_errors: bool) -> None:
    config = EmulatorConfig(
        keys=("alpha", "beta", "gamma"),
        time_scale=FAST,
        sync_window=0,
        spam_filter=False,
        http_errors=http_errors,
        wallet=0.03,
        key_wallets={"beta": 0.0, "gamma": 1},
        price_per_image=0.01,
    )
    refused = 402 if http_errors else 200
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v6/images/text2img"

        async def submit(key: str, samples: int) -> tuple[int, Any]:
            status, answer, _ = await post(http, url, text2img(key=key, samples=samples))
            return status, answer

        status, first = await submit("alpha", 2)
        assert (status, first["status"]) == (200, "processing")
        assert await submit("alpha", 2) == (refused, NO_CREDITS)  # 0.01 left, 0.02 asked
        status, second = await submit("alpha", 1)
        assert second["status"] == "processing"
        assert await submit("alpha", 1) == (refused, NO_CREDITS)  # empty, not -1e-17
        assert await submit("beta", 1) == (refused, NO_CREDITS)  # its own wallet: 0
        assert (await submit("gamma", 4))[1]["status"] == "processing"
        # An invalid key is still 401.
        status, invalid = await submit("delta", 1)
        assert (status, invalid["message"]) == (401 if http_errors else 200, "Invalid Api Key")

        balances = []
        for key in ("alpha", "beta", "gamma"):
            status, answer, _ = await post(http, f"{emu.base_url}/api/wallet_balance", {"key": key})
            assert status == 200 and answer["status"] == "success"
            assert answer["data"]["currency"] == "USD"
            balances.append(answer["data"]["balance"])
        assert balances == [0.0, 0.0, pytest.approx(0.96)]
        assert emu.stats.rejected_credits == 3
        assert [k.rejected_402 for k in emu.stats.per_key] == [2, 1, 0]
        assert [k.images for k in emu.stats.per_key] == [3, 0, 4]
        assert [k.spent for k in emu.stats.per_key] == [0.03, 0.0, 0.04]
        assert emu.stats.submissions_accepted == 3


@pytest.mark.parametrize("http_errors", [False, True])
async def test_premium_models_are_refused_with_403(http_errors: bool) -> None:
    config = EmulatorConfig(
        time_scale=FAST,
        sync_window=0,
        http_errors=http_errors,
        premium_models=("sd-1.5", "flux-pro"),
        wallet=1.0,
    )
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        for path in ("/api/v3/dreambooth", "/api/v6/images/text2img"):
            for model in ("sd-1.5", "flux-pro"):  # refused whether or not the model exists
                status, answer, _ = await post(http, emu.base_url + path, text2img(model_id=model))
                assert (status, answer) == (403 if http_errors else 200, PREMIUM)
        _, ok, _ = await post(http, f"{emu.base_url}/api/v6/images/text2img", text2img())
        assert ok["status"] == "processing"
        assert (emu.stats.rejected_premium, emu.stats.per_key[0].rejected_403) == (4, 4)
        # A refused submission costs nothing.
        _, wallet, _ = await post(http, f"{emu.base_url}/api/wallet_balance", {"key": KEY})
        assert wallet["data"]["balance"] == pytest.approx(0.99)


async def test_concurrent_submissions_never_overdraw_a_wallet() -> None:
    config = EmulatorConfig(
        time_scale=FAST, sync_window=0, wallet=0.05, queue_limit=100, spam_filter=False
    )
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v6/images/text2img"
        answers = await asyncio.gather(
            *(post(http, url, text2img(f"prompt {n}")) for n in range(12))
        )
        statuses = sorted(answer["status"] for _, answer, _ in answers)
        assert statuses == ["error"] * 7 + ["processing"] * 5
        _, wallet, _ = await post(http, f"{emu.base_url}/api/wallet_balance", {"key": KEY})
        assert wallet["data"]["balance"] == 0.0


# -- 5. per-key queue limits --------------------------------------------------------------------


async def test_each_key_has_its_own_queue_limit_and_jobs_run_side_by_side() -> None:
    config = EmulatorConfig(
        keys=("alpha", "beta", "gamma"),
        queue_limit=1,
        key_queue_limits={"alpha": 3, "beta": 3},
        workers=6,
        time_scale=SLOW,
        sync_window=0,
    )
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v6/images/text2img"
        accepted = []
        for key, limit in (("alpha", 3), ("beta", 3), ("gamma", 1)):
            for n in range(limit):
                _, answer, _ = await post(http, url, text2img(f"{key} {n}", key=key))
                assert answer["status"] == "processing", answer
                accepted.append(answer["id"])
            _, full, _ = await post(http, url, text2img(f"{key} extra", key=key))
            limit_text = f"Maximum {limit} queued requests allowed."
            assert full["message"] == f"Rate limit exceeded. {limit_text}"
        # Two keys of 3 slots: 6 jobs at once on the 6 workers; gamma's waits for a worker.
        statuses = [emu.jobs[job_id].status for job_id in accepted]
        assert statuses == ["processing"] * 6 + ["queued"]
        assert [k.rejected_429 for k in emu.stats.per_key] == [1, 1, 1]
        assert [k.accepted for k in emu.stats.per_key] == [3, 3, 1]


# -- 6. the account endpoints --------------------------------------------------------------------


async def test_wallet_balance_answers_the_docs_shape() -> None:
    config = EmulatorConfig(keys=("alpha", "beta"), key_wallets={"beta": 43.6})
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/wallet_balance"
        _, unlimited, _ = await post(http, url, {"key": "alpha"})
        assert unlimited == {
            "status": "success",
            "data": {"balance": 1_000_000.0, "currency": "USD"},
        }
        _, limited, _ = await post(http, url, {"key": "beta"})
        assert limited == {"status": "success", "data": {"balance": 43.6, "currency": "USD"}}
        _, invalid, _ = await post(http, url, {"key": "nope"})
        assert invalid["message"] == "Invalid Api Key"


async def test_request_count_counts_the_keys_queued_and_processing_jobs() -> None:
    config = EmulatorConfig(keys=("alpha", "beta"), time_scale=RUNNING, sync_window=0, workers=1)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        url = f"{base}/api/v6/processing/request_count"
        ids = []
        for n in range(3):
            body = text2img(f"{n}", key="alpha")
            _, answer, _ = await post(http, f"{base}/api/v6/images/text2img", body)
            ids.append(answer["id"])
        expected = {
            "status": "success",
            "processing_count": 3,  # one running, two queued behind it on the one worker
            "message": "Current processing request count retrieved successfully",
        }
        assert (await send(http, "GET", url, {"key": "alpha"}))[1] == expected
        assert (await send(http, "GET", f"{url}?key=alpha"))[1] == expected
        assert (await send(http, "POST", url, {"key": "alpha"}))[1] == expected
        assert (await send(http, "POST", url, {"key": "beta"}))[1]["processing_count"] == 0
        assert (await send(http, "GET", url))[1]["message"] == "Invalid Api Key"
        for job_id in ids:
            await emu.wait_finished(job_id)
        assert (await send(http, "POST", url, {"key": "alpha"}))[1]["processing_count"] == 0


@pytest.mark.parametrize("time_scale", [1.0, 0.02])
async def test_request_count_is_throttled_to_30_a_minute_per_key(time_scale: float) -> None:
    config = EmulatorConfig(keys=("alpha", "beta"), time_scale=time_scale, http_errors=True)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v6/processing/request_count"
        for _ in range(30):
            status, answer, _ = await send(http, "POST", url, {"key": "alpha"})
            assert (status, answer["status"]) == (200, "success")
        status, throttled, headers = await send(http, "GET", url, {"key": "alpha"})
        assert status == 429
        assert throttled["status"] == "error"
        window = 60 * time_scale  # real seconds: a service minute
        assert 0 < throttled["retry_after"] <= window
        assert throttled["retry_after"] > window / 2  # the 30 calls took less than half of it
        # The header is whole seconds from one second up, rounded up.
        assert 0 < float(headers["Retry-After"]) <= math.ceil(window)
        # Another key has its own 30.
        assert (await send(http, "POST", url, {"key": "beta"}))[0] == 200
        assert emu.stats.per_key[0].request_count_throttled == 1
        if time_scale < 1:
            # Once the window has slid past the first call, one more is allowed. Throttled calls
            # do not count, so asking again and again does not push it further away.
            for _ in range(100_000):
                status, _, _ = await send(http, "POST", url, {"key": "alpha"})
                if status == 200:
                    break
            assert status == 200


# -- 7. meta by version -------------------------------------------------------------------------


async def test_meta_in_processing_answers_everywhere_and_in_v6_v7_fetches_only() -> None:
    config = EmulatorConfig(time_scale=RUNNING, sync_window=0, spam_filter=False, workers=4)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        paths = {
            "v3": "/api/v3/dreambooth",
            "v4": "/api/v4/dreambooth",
            "v6": "/api/v6/images/text2img",
            "v7": "/api/v7/images/text-to-image",
        }
        answers = {}
        for version, path in paths.items():
            _, answer, _ = await post(http, base + path, text2img(version, seed=5))
            assert answer["status"] == "processing"
            assert answer["meta"].keys() >= META_FIELDS
            assert answer["meta"]["seed"] == 5
            _, running, _ = await post(http, answer["fetch_result"], {"key": KEY})
            assert running["status"] == "processing"
            assert running["meta"].keys() >= META_FIELDS
            answers[version] = answer
        for version, answer in answers.items():
            await emu.wait_finished(answer["id"])
            _, done, _ = await post(http, answer["fetch_result"], {"key": KEY})
            assert done["status"] == "success"
            if version in ("v3", "v4"):
                # The seed pages' form: the seed is only in the processing answer.
                assert done == {"status": "success", "id": answer["id"], "output": done["output"]}
            else:
                assert done["meta"].keys() >= META_FIELDS
                assert done["meta"]["seed"] == 5
        # v4's own fetch paths answer the short form too.
        _, v4, _ = await post(http, f"{base}/api/v4/dreambooth", text2img("v4 again"))
        await emu.wait_finished(v4["id"])
        for fetch in (
            post(http, f"{base}/api/v4/dreambooth/fetch", {"key": KEY, "request_id": v4["id"]}),
            post(http, f"{base}/api/v4/dreambooth/fetch/{v4['id']}", {"key": KEY}),
        ):
            assert (await fetch)[1].keys() == {"status", "id", "output"}


async def test_meta_in_synchronous_success_answers_on_v6_and_v7() -> None:
    cheap = CostModel(base=0.5, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    config = EmulatorConfig(time_scale=FAST, cost=cheap)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        for path in ("/api/v6/images/text2img", "/api/v7/images/text-to-image"):
            _, answer, _ = await post(http, emu.base_url + path, text2img(path, seed=9))
            assert answer["status"] == "success"
            assert answer["meta"].keys() >= META_FIELDS and answer["meta"]["seed"] == 9


# -- 8. records for tests -----------------------------------------------------------------------


async def test_stats_per_key_by_position_and_per_canonical_request() -> None:
    keys = ("secret-alpha-123", "secret-beta-456")
    config = EmulatorConfig(
        keys=keys,
        time_scale=SLOW,
        sync_window=0,
        queue_limit=2,
        spam_filter=False,
        key_wallets={"secret-beta-456": 0.02},
        premium_models=("sd-1.5",),
    )
    async with serve(config) as base, aiohttp.ClientSession() as http:
        url = f"{base}/api/v6/images/text2img"
        same = text2img("the same picture", key=keys[0], track_id="first")
        # The same request in another key order, with another key, webhook-free and track_id.
        again = dict(reversed(list(text2img("the same picture", key=keys[1]).items())))
        other = text2img("another picture", key=keys[0], samples=3)
        for body in (same, other, again):
            assert (await post(http, url, body))[1]["status"] == "processing"
        assert (await post(http, url, text2img("full", key=keys[0])))[1]["status"] == "error"
        assert (await post(http, url, text2img("poor", key=keys[1], samples=2)))[1] == NO_CREDITS
        premium = text2img("premium", key=keys[1], model_id="sd-1.5")
        assert (await post(http, url, premium))[1] == PREMIUM

        stats = await stats_json(http, base)
        digest = EmulatorStats.canonical_digest(same)
        assert digest == EmulatorStats.canonical_digest(again)
        assert stats["accepted_by_request"] == {
            digest: 2,
            EmulatorStats.canonical_digest(other): 1,
        }
        assert stats["duplicate_requests"] == {digest: 2}
        assert stats["per_key"] == [
            {
                "key_index": 0,
                "accepted": 2,
                "images": 4,
                "spent": 0.04,
                "rejected_402": 0,
                "rejected_403": 0,
                "rejected_429": 1,
                "request_count_throttled": 0,
            },
            {
                "key_index": 1,
                "accepted": 1,
                "images": 1,
                "spent": 0.01,
                "rejected_402": 1,
                "rejected_403": 1,
                "rejected_429": 0,
                "request_count_throttled": 0,
            },
        ]
        assert (stats["rejected_credits"], stats["rejected_premium"]) == (1, 1)
        assert stats["submissions_accepted"] == 3  # the existing fields stay
        text = json.dumps(stats)
        assert not any(key in text for key in keys)


def test_canonical_digest_ignores_key_webhook_and_track_id_only() -> None:
    body = text2img(webhook="http://127.0.0.1:1/hook", track_id=4)
    bare = {k: v for k, v in body.items() if k not in ("key", "webhook", "track_id")}
    assert EmulatorStats.canonical_digest(body) == EmulatorStats.canonical_digest(bare)
    assert EmulatorStats.canonical_digest(body) != EmulatorStats.canonical_digest(
        dict(body, seed=8)
    )
    assert EmulatorStats.canonical_digest(body) != EmulatorStats.canonical_digest(
        dict(body, width=512)  # a number is not the string "512"
    )


# -- 9. the command line ------------------------------------------------------------------------


def test_command_line_flags_for_the_new_settings() -> None:
    parser = build_arg_parser()
    help_text = " ".join(parser.format_help().split())
    for flag in (
        "--idless-processing-rate",
        "--base64-output",
        "--wallet",
        "--key-wallet",
        "--price-per-image",
        "--premium-models",
        "--key-queue-limit",
    ):
        assert flag in help_text
    assert "(default data_url)" in help_text and "(default 0.01)" in help_text
    args = parser.parse_args(
        [
            "--key=a",
            "--key=b=c",
            "--idless-processing-rate=0.25",
            "--base64-output=link",
            "--wallet=2.5",
            "--key-wallet=b=c=0.5",
            "--price-per-image=0.02",
            "--premium-models=sd-1.5,midjourney",
            "--key-queue-limit=a=3",
            "--key-queue-limit=b=c=10",
        ]
    )
    config = config_from_args(args)
    assert config.idless_processing_rate == 0.25
    assert config.base64_output == "link"
    assert (config.wallet, config.price_per_image) == (2.5, 0.02)
    assert config.key_wallets == {"b=c": 0.5}
    assert config.premium_models == ("sd-1.5", "midjourney")
    assert config.key_queue_limits == {"a": 3, "b=c": 10}
    assert config_from_args(parser.parse_args(["--wallet=unlimited"])).wallet is None
    defaults = config_from_args(parser.parse_args([]))
    assert (defaults.wallet, defaults.key_wallets, defaults.key_queue_limits) == (None, {}, {})


def test_per_key_settings_must_name_configured_keys_and_never_echo_them() -> None:
    with pytest.raises(ValueError, match="1 key") as caught:
        EmulatorConfig(keys=("a",), key_wallets={"secret-typo": 1.0})
    assert "secret-typo" not in str(caught.value)
    with pytest.raises(ValueError, match=r"keys\[0\]"):
        EmulatorConfig(keys=("a",), key_queue_limits={"a": 0})
    with pytest.raises(ValueError):
        EmulatorConfig(base64_output="png")  # type: ignore[arg-type]
