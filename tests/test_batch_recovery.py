"""A submission whose answer is lost is recovered from the service's webhook call.

The emulator's "drop after" fault accepts the job and then closes the connection: the client
cannot know the job exists, so without help the item would end ambiguous and its image, paid
for, would be lost. With a webhook receiver, the delivery names the job and the batch attaches.
"""

from __future__ import annotations

import pytest

import dreambooth_async as dba
from dreambooth_async.emulator import DEFAULT_KEY, CostModel, Emulator, EmulatorConfig, FaultConfig

pytestmark = pytest.mark.anyio

SCALE = 0.01


def _config(**faults: float) -> EmulatorConfig:
    return EmulatorConfig(
        time_scale=SCALE,
        cost=CostModel(base=10.0, per_step=0.0, per_sample=0.0, per_megapixel=0.0, noise=0.0),
        workers=8,
        queue_limit=50,
        sync_window=0.0,
        spam_filter=False,
        faults=FaultConfig(seed=11, **faults),
    )


def _requests(n: int) -> list[dba.Text2Img]:
    return [dba.Text2Img(model_id="midjourney", prompt=f"a harbour {i}", seed=i) for i in range(n)]


async def _run(emu: Emulator, recover: float) -> tuple[list[dba.BatchItem], dict[str, int]]:
    receiver = dba.WebhookReceiver()
    client = dba.DreamboothClient(
        DEFAULT_KEY, base_url=emu.base_url, poll=dba.PollPolicy().scaled(SCALE), webhooks=receiver
    )
    async with (
        client,
        client.map(_requests(30), concurrency=10, recover_ambiguous=recover) as batch,
    ):
        items = [item async for item in batch]
        return items, batch.stats


async def test_lost_answers_are_recovered_from_webhooks() -> None:
    async with Emulator(_config(rate_drop_after=0.3)) as emu:
        items, stats = await _run(emu, recover=5.0)
        # Accepted by the service, but the client never heard back:
        lost = emu.stats.submissions_accepted - stats["accepted"]
        assert lost > 0  # the seed drops some answers
        assert stats["recovered"] == lost
        assert all(item.ok for item in items), [item.error for item in items if not item.ok]
        assert emu.stats.duplicate_submissions() == {}  # nothing was paid for twice


async def test_without_recovery_the_same_items_end_ambiguous() -> None:
    async with Emulator(_config(rate_drop_after=0.3)) as emu:
        items, stats = await _run(emu, recover=0.0)
        ambiguous = [item for item in items if item.status == "ambiguous"]
        assert stats["recovered"] == 0
        assert len(ambiguous) == emu.stats.submissions_accepted - stats["accepted"] > 0


async def test_a_submission_that_never_landed_stays_ambiguous() -> None:
    # "Drop before": nothing was accepted, so no webhook can come; the wait runs out.
    async with Emulator(_config(rate_drop_before=0.3)) as emu:
        items, stats = await _run(emu, recover=0.3)
        ambiguous = [item for item in items if item.status == "ambiguous"]
        assert stats["recovered"] == 0
        assert ambiguous
        assert emu.stats.submissions_accepted == stats["accepted"] == len(items) - len(ambiguous)
        assert emu.stats.duplicate_submissions() == {}
