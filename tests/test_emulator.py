"""The emulator against docs/protocol.md: real HTTP on 127.0.0.1, a time scale instead of sleeps."""

from __future__ import annotations

import base64
import time

import aiohttp
import pytest
from _emulator_fixtures import (
    KEY,
    PROCESSING_KEYS,
    SEED_REQUEST,
    SEED_RESPONSE,
    get,
    picture,
    post,
    text2img,
    wait_for,
    webhook_receiver,
)
from PIL import Image, ImageChops

from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig, FaultConfig, serve

pytestmark = pytest.mark.anyio

FAST = 0.01  # a 7-second job takes 70 ms


def white_area(mask: Image.Image) -> Image.Image:
    return mask.convert("L").point([0] * 128 + [255] * 128)


# -- (1) the seed page's example --------------------------------------------------------------


async def test_seed_page_inpaint_example_answers_the_documented_shape() -> None:
    # Sent as printed: empty key and the placeholder model id are made valid by configuration,
    # and a wide synchronous window makes the answer a success, as on the page.
    config = EmulatorConfig(
        keys=("",),
        models=(*EmulatorConfig().models, "your_model_id"),
        time_scale=FAST,
        sync_window=60,
    )
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        body = dict(
            SEED_REQUEST,
            init_image=f"{emu.base_url}/samples/inpaint-photo.png",
            mask_image=f"{emu.base_url}/samples/inpaint-mask.png",
        )
        status, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth/inpaint", body)

        assert status == 200
        assert answer.keys() == SEED_RESPONSE.keys()
        assert answer["meta"].keys() == SEED_RESPONSE["meta"].keys()
        assert answer["status"] == "success"
        assert isinstance(answer["id"], int)
        assert answer["generationTime"] > 0
        meta = answer["meta"]
        assert (meta["W"], meta["H"], meta["n_samples"], meta["steps"]) == (512, 512, 1, 30)
        assert isinstance(meta["seed"], int)  # seed null -> a random one, reported
        assert meta["init_image"] == body["init_image"]
        assert meta["prompt"].startswith("a cat sitting on a bench")

        [url] = answer["output"]
        assert url.startswith(f"{emu.base_url}/generations/{meta['file_prefix']}")
        status, data = await get(http, url)
        assert status == 200
        out = picture(data)
        assert (out.format, out.size) == ("PNG", (512, 512))
        _, init_data = await get(http, body["init_image"])
        _, mask_data = await get(http, body["mask_image"])
        init = picture(init_data).convert("RGB")
        inside = white_area(picture(mask_data))
        out = out.convert("RGB")
        # Outside the mask the output is the init image, pixel for pixel...
        assert Image.composite(out, init, inside).tobytes() == out.tobytes()
        # ...and inside it, something was painted.
        assert ImageChops.difference(out, init).getbbox() is not None


async def test_sample_images_are_512_square() -> None:
    async with Emulator() as emu, aiohttp.ClientSession() as http:
        for name in ("inpaint-photo.png", "inpaint-mask.png", "init.png"):
            status, data = await get(http, f"{emu.base_url}/samples/{name}")
            assert status == 200
            assert picture(data).size == (512, 512)
        mask = picture((await get(http, f"{emu.base_url}/samples/inpaint-mask.png"))[1])
        assert {value for _, value in mask.convert("L").getcolors() or []} == {0, 255}
        assert (await get(http, f"{emu.base_url}/samples/nope.png"))[0] == 404


# -- (2) the queue limit ----------------------------------------------------------------------


async def test_queue_limit_is_per_key() -> None:
    # Time scale 1: the jobs (about 7 s each) cannot finish while the test runs.
    config = EmulatorConfig(keys=("alpha", "beta"), queue_limit=2, sync_window=0)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v3/dreambooth"
        for key in ("alpha", "beta"):
            for n in range(2):
                _, answer, _ = await post(http, url, text2img(f"{key} {n}", key=key))
                assert answer["status"] == "processing", answer
            status, answer, _ = await post(http, url, text2img(f"{key} extra", key=key))
            assert status == 200
            assert answer["status"] == "error"
            assert answer["message"] == "Rate limit exceeded. Maximum 2 queued requests allowed."
            assert 0 < answer["retry_after"] <= 20
        assert emu.stats.submissions_accepted == 4
        assert emu.stats.rejected_queue_full == 2


async def test_a_slot_frees_when_its_job_finishes() -> None:
    config = EmulatorConfig(queue_limit=1, time_scale=FAST, sync_window=0)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v3/dreambooth"
        _, first, _ = await post(http, url, text2img("first"))
        _, refused, _ = await post(http, url, text2img("second"))
        assert refused["status"] == "error"
        job = emu.jobs[first["id"]]
        # retry_after is real seconds: when the running job ends.
        assert refused["retry_after"] == pytest.approx(
            job.scheduled_finish - time.monotonic(), abs=0.05
        )
        await emu.wait_finished(first["id"])
        _, accepted, _ = await post(http, url, text2img("second"))
        assert accepted["status"] == "processing"


# -- (3) and (4): processing, fetch, success; future links ------------------------------------


async def test_processing_then_fetch_then_success() -> None:
    config = EmulatorConfig(time_scale=FAST, sync_window=0)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        sent_at = time.monotonic()
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img(samples="2"))
        assert answer.keys() == PROCESSING_KEYS
        assert answer["status"] == "processing"
        job_id = answer["id"]
        job = emu.jobs[job_id]
        # eta is real seconds and, without bias or noise, the true time left.
        assert answer["eta"] == pytest.approx(job.scheduled_finish - sent_at, abs=0.05)
        assert answer["eta"] > 0
        assert answer["fetch_result"] == f"{emu.base_url}/api/v3/dreambooth/fetch/{job_id}"
        assert answer["output"] == []
        assert len(answer["future_links"]) == 2
        assert emu.finished_at(job_id) is None

        _, fetched, _ = await post(http, answer["fetch_result"], {"key": KEY})
        assert fetched["status"] == "processing"
        assert 0 <= fetched["eta"] <= answer["eta"]

        await emu.wait_finished(job_id)
        finished_at = emu.finished_at(job_id)
        assert finished_at is not None and finished_at <= time.monotonic()
        _, done, _ = await post(http, answer["fetch_result"], {"key": KEY})
        # The v3 fetch answers the short form of its docs' example.
        assert done == {"status": "success", "id": job_id, "output": answer["future_links"]}
        _, again, _ = await post(http, answer["fetch_result"], {"key": KEY})
        assert again == done

        async with http.get(f"{emu.base_url}/_emulator/jobs/{job_id}") as resp:
            state = await resp.json()
        assert state["status"] == "success"
        assert state["finished_at"] == pytest.approx(finished_at)


@pytest.mark.parametrize("kind", ["normal", "uniform"])
async def test_eta_bias_and_noise(kind: str) -> None:
    config = EmulatorConfig(
        time_scale=1.0, sync_window=0, eta_bias=0.3, eta_noise=0.05, eta_noise_kind=kind
    )
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img())
        job = emu.jobs[answer["id"]]
        ratios = []
        for _ in range(30):
            before = time.monotonic()
            _, fetched, _ = await post(http, answer["fetch_result"], {"key": KEY})
            ratios.append(fetched["eta"] / (job.expected_finish - before))
    # Biased 30% high; spread by the noise (uniform: never beyond +-5%, give or take the
    # milliseconds between reading the clock here and there).
    assert 1.2 < sum(ratios) / len(ratios) < 1.4
    assert len({round(r, 6) for r in ratios}) > 1
    if kind == "uniform":
        assert all(1.3 * 0.95 - 0.01 <= r <= 1.3 * 1.05 + 0.01 for r in ratios)


async def test_future_links_404_until_done_then_serve_the_files() -> None:
    config = EmulatorConfig(time_scale=FAST, sync_window=0)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        body = text2img(width=320, height="192", samples=3)
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", body)
        links = answer["future_links"]
        assert [(await get(http, link))[0] for link in links] == [404, 404, 404]
        await emu.wait_finished(answer["id"])
        files = []
        for link in links:
            status, data = await get(http, link)
            assert status == 200
            assert picture(data).size == (320, 192)
            files.append(data)
        assert len(set(files)) == 3  # each sample is its own picture
        assert (await get(http, links[0].replace("-0.png", "-9.png")))[0] == 404


async def test_short_jobs_answer_success_at_once() -> None:
    # Half a service second of work is inside the default one-second synchronous window.
    cheap = CostModel(base=0.5, per_step=0, per_sample=0, per_megapixel=0, noise=0)
    config = EmulatorConfig(time_scale=FAST, cost=cheap)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img())
        assert answer["status"] == "success"
        assert answer["generationTime"] == pytest.approx(0.5 * FAST)
        assert emu.finished_at(answer["id"]) is not None
        assert (await get(http, answer["output"][0]))[0] == 200


# -- (5) determinism --------------------------------------------------------------------------


async def test_same_seed_gives_byte_identical_images() -> None:
    config = EmulatorConfig(time_scale=0.001, sync_window=10_000, spam_filter=False)

    async def image(emu: Emulator, http: aiohttp.ClientSession, **fields: object) -> bytes:
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img(**fields))
        status, data = await get(http, answer["output"][0])
        assert status == 200
        return data

    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        first = await image(emu, http, seed=42)
        assert await image(emu, http, seed=42) == first
        assert await image(emu, http, seed="42", track_id=1) == first  # a string seed is the same
        assert await image(emu, http, seed=43) != first
        assert await image(emu, http, seed=42, prompt="a dog") != first
        assert await image(emu, http, seed=42, model_id="sd-1.5") != first
    async with Emulator(config) as other, aiohttp.ClientSession() as http:
        assert await image(other, http, seed=42) == first  # and across runs


async def test_jpg_output_format() -> None:
    config = EmulatorConfig(time_scale=0.001, sync_window=10_000, image_format="jpg")
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img())
        assert answer["output"][0].endswith(".jpg")
        async with http.get(answer["output"][0]) as resp:
            assert resp.content_type == "image/jpeg"
            assert picture(await resp.read()).format == "JPEG"


async def test_img2img_blends_the_init_image_by_strength() -> None:
    config = EmulatorConfig(time_scale=0.001, sync_window=10_000)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        init_url = f"{emu.base_url}/samples/init.png"
        init = picture((await get(http, init_url))[1]).convert("RGB")
        url = f"{emu.base_url}/api/v3/dreambooth/img2img"
        _, kept, _ = await post(http, url, text2img(init_image=init_url, strength=0))
        _, changed, _ = await post(http, url, text2img(init_image=init_url, strength="0.5"))
        kept_image = picture((await get(http, kept["output"][0]))[1]).convert("RGB")
        changed_image = picture((await get(http, changed["output"][0]))[1]).convert("RGB")
        assert kept_image.tobytes() == init.tobytes()
        assert ImageChops.difference(changed_image, init).getbbox() is not None
        assert kept["meta"]["init_image"] == init_url
        assert "mask_image" not in kept["meta"]


# -- (7) webhooks -----------------------------------------------------------------------------


async def test_webhooks_arrive_with_their_track_id() -> None:
    def all_three(calls: list[dict[str, object]]) -> bool:
        return len(calls) >= 3

    config = EmulatorConfig(time_scale=FAST, sync_window=0, webhook_delay=5.0)
    async with (
        webhook_receiver(all_three) as receiver,
        Emulator(config) as emu,
        aiohttp.ClientSession() as http,
    ):
        ids = {}
        for track_id in ("t-1", 2, "t-3"):
            body = text2img(f"hooked {track_id}", webhook=receiver.url, track_id=track_id)
            _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", body)
            ids[answer["id"]] = track_id
        await wait_for(receiver.done)
        assert {call["id"]: call["track_id"] for call in receiver.calls} == ids
        for call, arrived_at in zip(receiver.calls, receiver.arrived_at, strict=True):
            assert call["status"] == "success"
            assert call.keys() == {"status", "id", "output", "generationTime", "track_id", "meta"}
            finished_at = emu.finished_at(call["id"])
            assert finished_at is not None
            # Sent once the job finished plus the configured delay (5 service seconds).
            assert arrived_at >= finished_at + 5.0 * FAST
        assert emu.stats.webhooks_sent == 3


async def test_webhooks_twice_when_duplicated_and_failed_payloads() -> None:
    def four(calls: list[dict[str, object]]) -> bool:
        return len(calls) >= 4

    config = EmulatorConfig(
        time_scale=FAST,
        sync_window=0,
        webhook_duplicate_rate=1.0,
        faults=FaultConfig(rate_failed=1.0),
    )
    async with (
        webhook_receiver(four) as receiver,
        Emulator(config) as emu,
        aiohttp.ClientSession() as http,
    ):
        for track_id in ("a", "b"):
            body = text2img(f"dup {track_id}", webhook=receiver.url, track_id=track_id)
            await post(http, f"{emu.base_url}/api/v3/dreambooth", body)
        await wait_for(receiver.done)
        await emu.wait_webhooks()
        assert sorted(call["track_id"] for call in receiver.calls) == ["a", "a", "b", "b"]
        for call in receiver.calls:
            assert call == {
                "status": "failed",
                "id": call["id"],
                "message": "Failed, Try Again",
                "track_id": call["track_id"],
            }
        assert emu.stats.webhooks_duplicated == 2
        assert emu.stats.webhooks_sent == 4


async def test_webhook_drops_follow_the_seeded_rate() -> None:
    config = EmulatorConfig(
        time_scale=0.001, sync_window=0, webhook_drop_rate=0.5, spam_filter=False, queue_limit=100
    )
    async with (
        webhook_receiver(lambda calls: False) as receiver,
        Emulator(config) as emu,
        aiohttp.ClientSession() as http,
    ):
        for n in range(40):
            body = text2img(f"drop {n}", webhook=receiver.url, track_id=n)
            await post(http, f"{emu.base_url}/api/v3/dreambooth", body)
        await emu.wait_webhooks()
        assert emu.stats.webhooks_dropped + len(receiver.calls) == 40
        assert 10 <= emu.stats.webhooks_dropped <= 30


async def test_webhooks_only_on_loopback() -> None:
    async with Emulator(EmulatorConfig(time_scale=FAST)) as emu, aiohttp.ClientSession() as http:
        body = text2img(webhook="https://example.com/hook")
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", body)
        assert answer["status"] == "error"
        assert "webhook" in answer["message"]


# -- (8) errors: in HTTP 200 by default, 4xx on request ----------------------------------------


@pytest.mark.parametrize("http_errors", [False, True])
async def test_errors_in_200_bodies_or_as_status_codes(http_errors: bool) -> None:
    def expect(code: int) -> int:
        return code if http_errors else 200

    config = EmulatorConfig(time_scale=1.0, sync_window=0, queue_limit=1, http_errors=http_errors)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v3/dreambooth"

        status, answer, _ = await post(http, url, text2img(key="wrong"))
        assert status == expect(401)
        assert answer["message"] == "Invalid Api Key" and "tip" in answer
        status, answer, _ = await post(http, url, {"model_id": "midjourney", "prompt": "x"})
        assert (status, answer["message"]) == (expect(401), "Invalid Api Key")

        body = text2img(width="2048", samples=5, num_inference_steps="51", seed="x")
        del body["prompt"]
        status, answer, _ = await post(http, url, body)
        assert status == expect(400)
        assert answer == {
            "status": "error",
            "message": {
                "prompt": ["The prompt field is required."],
                "width": ["The width must not be greater than 1024."],
                "samples": ["The samples must not be greater than 4."],
                "num_inference_steps": ["The num inference steps must not be greater than 50."],
                "seed": ["The seed must be a non-negative integer."],
            },
        }
        status, answer, _ = await post(http, url, text2img(model_id="no-such-model"))
        assert (status, answer) == (
            expect(400),
            {"status": "error", "message": "Model id not found"},
        )
        status, answer, _ = await post(
            http, f"{emu.base_url}/api/v3/dreambooth/img2img", text2img()
        )
        assert answer["message"] == {"init_image": ["The init image field is required."]}

        status, answer, _ = await post(http, url, text2img("accepted"))
        assert (status, answer["status"]) == (200, "processing")
        status, answer, headers = await post(http, url, text2img("over the limit"))
        assert status == expect(429)
        assert answer["message"].startswith("Rate limit exceeded. Maximum 1 queued")
        if http_errors:
            assert float(headers["Retry-After"]) > 0

        fetch = f"{emu.base_url}/api/v3/dreambooth/fetch/999"
        status, answer, _ = await post(http, fetch, {"key": KEY})
        assert (status, answer) == (
            expect(400),
            {"status": "error", "message": "Request not found"},
        )
        async with http.post(url, data=b"{not json") as resp:
            assert resp.status == expect(400)


async def test_numbers_as_strings_or_numbers() -> None:
    config = EmulatorConfig(time_scale=FAST, sync_window=0, spam_filter=False)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v3/dreambooth"
        _, as_text, _ = await post(http, url, text2img(guidance_scale="7", strength="0.3"))
        numbers = text2img(
            width=512, height=512, samples=1, num_inference_steps=30, guidance_scale=7
        )
        _, as_numbers, _ = await post(http, url, numbers)
        for answer in (as_text, as_numbers):
            meta = answer["meta"]
            assert (meta["W"], meta["H"], meta["n_samples"], meta["steps"]) == (512, 512, 1, 30)
            assert meta["guidance_scale"] == 7.0
        # Inpaint documents `steps`, the others `num_inference_steps`: either is read.
        _, crossed, _ = await post(http, url, text2img(num_inference_steps=None, steps="12"))
        assert crossed["meta"]["steps"] == 12


async def test_fetch_of_another_keys_job_is_not_found() -> None:
    config = EmulatorConfig(keys=("alpha", "beta"), time_scale=FAST, sync_window=0)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        _, answer, _ = await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img(key="alpha"))
        _, other, _ = await post(http, answer["fetch_result"], {"key": "beta"})
        assert other == {"status": "error", "message": "Request not found"}
        _, own, _ = await post(http, answer["fetch_result"], {"key": "alpha"})
        assert own["status"] == "processing"


# -- (9) v4 and v6 ----------------------------------------------------------------------------


async def test_v4_paths_and_both_fetch_styles() -> None:
    config = EmulatorConfig(time_scale=FAST, sync_window=0)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        _, answer, _ = await post(http, f"{base}/api/v4/dreambooth", text2img())
        assert answer.keys() == PROCESSING_KEYS
        job_id = answer["id"]
        # The legacy service points v4 callers at the v3 fetch path.
        assert answer["fetch_result"] == f"{base}/api/v3/dreambooth/fetch/{job_id}"
        await emu.wait_finished(job_id)
        by_body = await post(
            http, f"{base}/api/v4/dreambooth/fetch", {"key": KEY, "request_id": job_id}
        )
        by_path = await post(http, f"{base}/api/v4/dreambooth/fetch/{job_id}", {"key": KEY})
        by_string = await post(
            http, f"{base}/api/v4/dreambooth/fetch", {"key": KEY, "request_id": str(job_id)}
        )
        assert by_body[1] == by_path[1] == by_string[1]
        assert by_body[1]["status"] == "success"
        # The seed pages' short form: meta is only in the processing answer on v3 and v4.
        assert by_body[1].keys() == {"status", "id", "output"}
        _, missing, _ = await post(http, f"{base}/api/v4/dreambooth/fetch", {"key": KEY})
        assert missing["message"] == {"request_id": ["The request id field is required."]}


async def test_v6_paths_step_cap_and_both_fetch_styles() -> None:
    config = EmulatorConfig(time_scale=FAST, sync_window=0)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        body = text2img(num_inference_steps="50")
        _, answer, _ = await post(http, f"{base}/api/v6/images/text2img", body)
        assert answer["status"] == "processing"
        assert "message" in answer and "messege" not in answer
        assert answer["meta"]["steps"] == 20  # capped silently
        job_id = answer["id"]
        assert answer["fetch_result"] == f"{base}/api/v6/images/fetch/{job_id}"
        await emu.wait_finished(job_id)
        _, by_body, _ = await post(
            http, f"{base}/api/v6/images/fetch", {"key": KEY, "request_id": job_id}
        )
        _, by_path, _ = await post(http, answer["fetch_result"], {"key": KEY})
        assert by_body == by_path
        assert by_body["status"] == "success"
        assert {"proxy_links", "nsfw_content_detected", "webhook_status", "tip"} <= by_body.keys()


async def test_base64_images_on_v4_and_v6_but_not_v3() -> None:
    config = EmulatorConfig(time_scale=0.001, sync_window=10_000, spam_filter=False)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        photo = (await get(http, f"{base}/samples/inpaint-photo.png"))[1]
        mask = (await get(http, f"{base}/samples/inpaint-mask.png"))[1]
        body = text2img(
            init_image=base64.b64encode(photo).decode(),
            mask_image="data:image/png;base64," + base64.b64encode(mask).decode(),
            base64="yes",
            steps="10",
        )
        for path in ("/api/v4/dreambooth/inpaint", "/api/v6/images/inpaint"):
            _, answer, _ = await post(http, base + path, body)
            assert answer["status"] == "success", answer
            # "base64": "yes" makes the output a data URL of the image as well.
            data_url = answer["output"][0]
            assert data_url.startswith("data:image/png;base64,")
            out = picture(base64.b64decode(data_url.partition(",")[2])).convert("RGB")
            init = picture(photo).convert("RGB")
            inside = white_area(picture(mask))
            assert Image.composite(out, init, inside).tobytes() == out.tobytes()
        _, refused, _ = await post(http, f"{base}/api/v3/dreambooth/inpaint", body)
        assert refused["status"] == "error"
        assert "init_image" in refused["message"]


async def test_remote_images_are_not_fetched_a_sample_stands_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The emulator works offline: the seed page's GitHub URLs (and a README's example.com)
    # get the bundled samples instead, and its log says so once per URL.
    config = EmulatorConfig(time_scale=FAST, sync_window=10_000, spam_filter=False)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        remote = dict(SEED_REQUEST, key=KEY, model_id="midjourney", seed=5)
        local = dict(
            remote,
            init_image=f"{base}/samples/inpaint-photo.png",
            mask_image=f"{base}/samples/inpaint-mask.png",
        )
        outputs = []
        with caplog.at_level("WARNING", logger="dreambooth_async.emulator"):
            for body in (remote, local, remote):
                _, answer, _ = await post(http, f"{base}/api/v3/dreambooth/inpaint", body)
                assert answer["status"] == "success", answer
                async with http.get(answer["output"][0]) as resp:
                    outputs.append(await resp.read())
        assert outputs[0] == outputs[1] == outputs[2]
        said = [r.getMessage() for r in caplog.records if "not fetched" in r.getMessage()]
        assert len(said) == 2, said
        assert "init_image https://raw.githubusercontent.com/" in said[0]
        assert "/samples/inpaint-photo.png stands in" in said[0]
        assert "mask_image" in said[1] and "inpaint-mask.png" in said[1]
        # Not a URL at all is still a field error, and nothing is accepted for it.
        accepted = emu.stats.submissions_accepted
        _, refused, _ = await post(
            http, f"{base}/api/v3/dreambooth/inpaint", dict(remote, init_image="photo.png")
        )
        assert refused["status"] == "error"
        assert set(refused["message"]) == {"init_image"}
        assert emu.stats.submissions_accepted == accepted


async def test_system_load_model_list_cold_models_and_reload() -> None:
    config = EmulatorConfig(
        time_scale=FAST, sync_window=0, cold_models=("sd-1.5",), cold_start=100, workers=4
    )
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        base = emu.base_url
        _, load, _ = await post(http, f"{base}/api/v3/system_load", {"key": KEY})
        assert load == {"queue_num": 0, "queue_time": 0.0, "status": "ok"}

        async def statuses() -> dict[str, str]:
            _, models, _ = await post(http, f"{base}/api/v4/dreambooth/model_list", {"key": KEY})
            assert isinstance(models, list)
            return {m["model_id"]: m["status"] for m in models}

        assert (await statuses())["sd-1.5"] == "model_unloaded"
        _, cold, _ = await post(http, f"{base}/api/v3/dreambooth", text2img(model_id="sd-1.5"))
        # 100 service seconds of loading at scale 0.01: at least a second of ETA.
        assert cold["status"] == "processing" and cold["eta"] >= 1.0
        assert (await statuses())["sd-1.5"] == "model_loading"
        _, warm, _ = await post(http, f"{base}/api/v3/dreambooth", text2img(model_id="midjourney"))
        assert warm["eta"] < 0.5

        _, reload, _ = await post(
            http, f"{base}/api/v4/dreambooth/model_reload", {"key": KEY, "model_id": "midjourney"}
        )
        assert reload["status"] == "success"
        assert (await statuses())["midjourney"] == "model_loading"
        _, later, _ = await post(http, f"{base}/api/v3/dreambooth", text2img("after reload"))
        assert later["eta"] >= 0.9
        _, missing, _ = await post(
            http, f"{base}/api/v4/dreambooth/model_reload", {"key": KEY, "model_id": "nope"}
        )
        assert missing == {"status": "error", "message": "Model id not found"}


async def test_system_load_counts_the_queue() -> None:
    config = EmulatorConfig(workers=1, sync_window=0, queue_limit=10)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        for n in range(3):
            await post(http, f"{emu.base_url}/api/v3/dreambooth", text2img(f"queued {n}"))
        _, load, _ = await post(http, f"{emu.base_url}/api/v3/system_load", {"key": KEY})
        assert load["queue_num"] == 2  # one runs, two wait
        assert load["queue_time"] > 0


# -- (10) the spam filter ---------------------------------------------------------------------


async def test_spam_filter_rejects_an_identical_request_within_the_window() -> None:
    config = EmulatorConfig(time_scale=FAST, sync_window=0, spam_window=1.0)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v3/dreambooth"
        _, first, _ = await post(http, url, text2img())
        assert first["status"] == "processing"
        _, again, _ = await post(http, url, text2img())
        assert again["message"] == "Rate limit exceeded"
        assert "please wait for 0.01 seconds" in again["tips"]  # 1 service second, scaled
        _, different, _ = await post(http, url, text2img(track_id="other"))
        assert different["status"] == "processing"
        assert emu.stats.rejected_spam == 1
        # Once the window has passed, the same body is accepted. Rejections do not extend it.
        for _ in range(10_000):
            _, retried, _ = await post(http, url, text2img())
            if retried["status"] != "error":
                break
        assert retried["status"] == "processing"
        # The fingerprint ignores track_id: three accepted submissions of one (model, prompt, seed).
        assert emu.stats.duplicate_submissions() == {("midjourney", "a cat on a bench", 7): 3}


async def test_spam_filter_ignores_rejected_submissions() -> None:
    config = EmulatorConfig(time_scale=FAST, sync_window=0, queue_limit=1)
    async with Emulator(config) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.base_url}/api/v3/dreambooth"
        _, first, _ = await post(http, url, text2img("first"))
        _, full, _ = await post(http, url, text2img("second"))
        assert full["message"].startswith("Rate limit exceeded. Maximum")
        await emu.wait_finished(first["id"])
        _, retried, _ = await post(http, url, text2img("second"))
        assert retried["status"] == "processing"


# -- running it -------------------------------------------------------------------------------


async def test_serve_yields_the_base_url_and_stats_are_served() -> None:
    config = EmulatorConfig(time_scale=FAST, sync_window=0)
    async with serve(config) as base_url, aiohttp.ClientSession() as http:
        await post(http, f"{base_url}/api/v3/dreambooth", text2img())
        async with http.get(f"{base_url}/_emulator/stats") as resp:
            stats = await resp.json()
    assert stats["submissions_accepted"] == 1
    assert stats["duplicate_submissions"] == []
