"""A call's turn in the slot window on the path every ``generate()`` takes: a free slot taken
at once, the submission sent, the slot given back. Whatever happens to the submission
(answered, turned away as "queue full" and sent again, failed, cancelled on the wire), the
slot goes back and nothing stays counted as on the wire."""

from __future__ import annotations

import anyio
import pytest
from replay_server import ReplayServer, Reply, fast_client_options

import dreambooth_async as dba

pytestmark = pytest.mark.anyio

PATH = "/api/v3/dreambooth"
REQUEST = dba.Text2Img(model_id="m", prompt="a cat")
SUCCESS = Reply.json({"status": "success", "id": 7, "output": ["https://cdn.example/7-0.png"]})
QUEUE_FULL = Reply.json(
    {"status": "error", "message": "Too many requests in the queue; try again later"}, 429
)


def client_for(server: ReplayServer) -> dba.DreamboothClient:
    return dba.DreamboothClient(base_url=server.url, **fast_client_options())


def counted(client: dba.DreamboothClient) -> tuple[int, int]:
    """(slots held, submissions on the wire) of the client's one window."""
    window = client.slot_pool.windows[0]
    return window.held, window.submitting


async def test_an_answer_gives_the_slot_back() -> None:
    async with ReplayServer() as server:
        server.always(PATH, SUCCESS)
        async with client_for(server) as client:
            for _ in range(3):
                assert (await client.generate(REQUEST)).id == "7"
                assert counted(client) == (0, 0)


async def test_a_queue_full_answer_is_sent_again_and_the_slot_given_back_once() -> None:
    async with ReplayServer() as server:
        server.script(PATH, QUEUE_FULL, SUCCESS)
        async with client_for(server) as client:
            result = await client.generate(REQUEST)
            assert result.id == "7"
            assert counted(client) == (0, 0)
        assert server.count(PATH) == 2


async def test_a_failed_submission_gives_its_slot_back() -> None:
    async with ReplayServer() as server:
        server.always(PATH, Reply.json({"status": "error", "message": "no such model"}, 400))
        async with client_for(server) as client:
            for _ in range(2):
                with pytest.raises(dba.APIError):
                    await client.generate(REQUEST)
                assert counted(client) == (0, 0)


async def test_a_call_cancelled_on_the_wire_gives_its_slot_back() -> None:
    async with ReplayServer() as server:
        server.always(PATH, Reply.slow())
        async with client_for(server) as client:
            # The slot is taken before the POST, so wherever the cancellation finds the call
            # (connecting, sending, waiting for the answer), it holds one.
            with anyio.move_on_after(0.2) as scope:
                await client.generate(REQUEST)
            assert scope.cancelled_caught
            assert counted(client) == (0, 0)
