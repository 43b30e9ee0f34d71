"""A result's repr stays short when the service sends its images inline as base64."""

from __future__ import annotations

import pytest

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

QUICK = CostModel(base=1, per_step=0.01, per_sample=0, per_megapixel=0, noise=0)


async def test_repr_of_a_result_with_base64_outputs_is_short() -> None:
    config = EmulatorConfig(time_scale=0.001, sync_window=10_000, cost=QUICK, spam_filter=False)
    async with Emulator(config) as emu:
        picture = emu.service.images.sample("init.png")
        assert picture is not None
        async with dba.DreamboothClient(emu.key, base_url=emu.base_url) as client:
            # Bytes go as base64 (v6), and the emulator answers in kind, as the service does.
            result = await client.img2img(
                model_id="midjourney", prompt="a fox", init_image=picture, samples=2, seed=1
            )
    assert all(item.startswith("data:image/png;base64,") for item in result.output)
    assert min(len(item) for item in result.output) > 10_000
    shown = repr(result)
    assert len(shown) < 400, shown
    assert shown.startswith("dreambooth_async.GenerationResult(id=") or "GenerationResult(" in shown
    assert "'data:image/png;base64," in shown
    assert f"({len(result.output[0])} chars)" in shown
    # Short strings (URLs) are shown whole.
    plain = dba.GenerationResult(id="1", status="success", output=("https://a.example/1.png",))
    assert "output=('https://a.example/1.png',)" in repr(plain)
