"""Drafts of requests: a rerun's plan keys and checks the items its manifest covers without
building them, and says exactly what building them would say (issue 24: a rerun over a
finished manifest costs no more than the dry run)."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path
from typing import Any

import attrs
import pytest
from _cli_commands import emulator_generate_args

import dreambooth_async as dba
from dreambooth_async import cli
from dreambooth_async._batch import plan_run
from dreambooth_async._prompts import PromptFile
from dreambooth_async._request_drafts import RequestDraft
from dreambooth_async._request_keys import request_digest

# Each field's values, good ones first; the rest are refused by the field's converter or
# validator (or, for extra, by a validator that reads the instance: such drafts are built).
GOOD_AND_BAD: dict[str, list[Any]] = {
    "model_id": ["m", "midjourney", "", " "],
    "prompt": ["p", 'ünïcode \\ "q" \u2028 😀', " ", 5],
    "negative_prompt": [None, "blur", 3],
    "width": [512, 64, 1024, 2000, 0, "512", 512.0, True],
    "height": [512, 8, -1],
    "samples": [1, 4, 5],
    "steps": [30, 1, 51],
    "safety_checker": [None, True, False, "yes"],
    "guidance_scale": [None, 7, 7.5, 0.5, float("nan")],
    "scheduler": [None, "LCMScheduler", dba.Scheduler.DDIMScheduler, "NoSuchScheduler", 3],
    "seed": [None, 0, 2**32 - 1, -1, 2**32, False],
    "webhook": [None, "https://hooks.example/x?y=1", "ftp://x"],
    "track_id": [None, 7, "seven", 1.5],
    "clip_skip": [None, 2, 9],
    "extra": [{}, {"x": 1}, {"width": 5}],
    "strength": [0.7, 0.25, 1.5],
}


def random_arguments(rng: random.Random, cls: type[dba.GenerationRequest]) -> dict[str, Any]:
    names = [f.name for f in attrs.fields(cls)]
    values: dict[str, Any] = {}
    for name in rng.sample(names, rng.randint(0, len(names))):
        choices = GOOD_AND_BAD.get(name)
        if name in ("init_image", "mask_image"):
            choices = [b"png", "https://img.example/a.png", Path(__file__), b"", "/no/such.png"]
        if choices is None:
            choices = [None, True, "text", 2]
        # Mostly good values, so that most arguments make a request.
        good = choices[: max(1, len(choices) // 2)]
        values[name] = rng.choice(good if rng.random() < 0.9 else choices)
    if rng.random() < 0.95:  # the required ones, mostly
        values.setdefault("model_id", "m")
        values.setdefault("prompt", "p")
        if cls is not dba.Text2Img:
            values.setdefault("init_image", b"png")
            values.setdefault("mask_image", b"png")
            if cls is dba.Img2Img:
                values.pop("mask_image")
    if rng.random() < 0.03:
        values["colour"] = "red"  # no such field
    # Insertion order is the draft's business, not the request's.
    return dict(rng.sample(list(values.items()), len(values)))


def outcome(call: Any) -> tuple[str, str]:
    try:
        return "ok", repr(call())
    except (dba.RequestValidationError, TypeError) as exc:
        return type(exc).__name__, str(exc)


def test_a_draft_keys_and_checks_as_building_does() -> None:
    rng = random.Random(24)
    refused = 0
    for _ in range(3000):
        cls = rng.choice((dba.Text2Img, dba.Img2Img, dba.Inpaint))
        values = random_arguments(rng, cls)
        built = outcome(lambda: request_digest(cls(**values)))  # noqa: B023 - called at once
        # As a plan uses it: the digest first (a converter's error), then the checks.
        draft = RequestDraft(cls, values)
        keyed = outcome(lambda: (draft.digest(), draft.check())[0])  # noqa: B023
        assert keyed == built, (cls, values)
        # And checked alone, before its key is asked for.
        alone = RequestDraft(cls, values)
        assert outcome(alone.check)[0] == built[0] or built[0] != "ok", (cls, values)
        if built[0] != "ok":
            refused += 1
            assert outcome(alone.check) == built, (cls, values)
    assert 300 < refused < 2700  # both kinds of arguments were tried


def test_a_draft_checks_nothing_while_validators_are_disabled() -> None:
    values = {"model_id": "m", "prompt": "p", "width": 5000}
    with attrs.validators.disabled():
        request = dba.Text2Img(**values)
        draft = RequestDraft(dba.Text2Img, values)
        draft.check()
        assert draft.digest() == request_digest(request)
    with pytest.raises(dba.RequestValidationError, match="width"):
        RequestDraft(dba.Text2Img, values).check()


def test_a_row_draft_says_what_is_wrong_with_its_line(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "a"}, {"prompt": "b", "steps": 99}, {"prompt": "c", "scheduler": "x"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    file = PromptFile(path=prompts, format="jsonl", defaults={"model_id": "m"})
    drafts = list(file.drafts())
    assert len(drafts) == 3
    drafts[0].check()  # type: ignore[union-attr]
    with pytest.raises(dba.PromptFileError, match=r"prompts.jsonl:2: .*steps"):
        drafts[1].check()  # type: ignore[union-attr]
    with pytest.raises(dba.PromptFileError, match=r"prompts.jsonl:3: .*scheduler"):
        drafts[2].digest()  # type: ignore[union-attr]
    with pytest.raises(dba.PromptFileError, match=r"prompts.jsonl:3: .*scheduler"):
        drafts[2].build()  # type: ignore[union-attr]


def test_drafts_give_the_requests_checked_gives(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows: list[dict[str, Any]] = [{"prompt": f"p {i % 7}"} for i in range(40)]  # repeats
    rows += [{"prompt": "k", "key": f"key-{i}", "width": 256} for i in range(5)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for shard in (None, (1, 3), (3, 3)):
        file = PromptFile(path=prompts, format="jsonl", defaults={"model_id": "m"}, shard=shard)
        checked = list(file.checked())
        drafts = list(file.drafts())
        assert len(drafts) == len(checked) > 0
        for draft, request in zip(drafts, checked, strict=True):
            if isinstance(request, tuple):
                assert isinstance(draft, tuple) and draft[0] == request[0]
                draft, request = draft[1], request[1]
            assert isinstance(draft, RequestDraft) and not isinstance(request, tuple)
            assert draft.build() == request and draft.digest() == request_digest(request)

    # A bad row outside the shard is refused too, and a repeated key after its row's fault.
    bad = prompts.read_text() + json.dumps({"prompt": "x", "steps": 0}) + "\n"
    prompts.write_text(bad)
    for shard in ((1, 3), (2, 3), (3, 3)):
        file = PromptFile(path=prompts, format="jsonl", defaults={"model_id": "m"}, shard=shard)
        with pytest.raises(dba.PromptFileError, match=r":46: .*steps"):
            for draft in file.drafts():
                (draft[1] if isinstance(draft, tuple) else draft).check()
    prompts.write_text(bad.replace('"steps": 0', '"steps": 0, "key": "key-1"'))
    file = PromptFile(path=prompts, format="jsonl", defaults={"model_id": "m"})
    with pytest.raises(dba.PromptFileError, match=r":46: .*steps"):
        list(file.drafts())


class CountingDraft(RequestDraft):
    __slots__ = ()
    built = 0

    def build(self) -> dba.GenerationRequest:
        CountingDraft.built += 1
        return super().build()


def test_a_plan_builds_only_what_it_would_send(tmp_path: Path) -> None:
    arguments = [{"model_id": "m", "prompt": "same"} for _ in range(3)]  # numbered repeats
    arguments += [{"model_id": "m", "prompt": f"p {i}", "seed": i} for i in range(7)]
    requests: list[Any] = [dba.Text2Img(**a) for a in arguments]
    requests.append(("mine", dba.Text2Img(model_id="m", prompt="keyed")))
    keys = [dba.request_key(r) for r in requests[:10]]
    keys[1], keys[2] = f"{keys[1]}.2", f"{keys[2]}.3"
    keys.append("mine")
    path = tmp_path / "m.jsonl"
    with dba.Manifest.open(path, durable=False) as manifest:
        for i in (0, 2, 3, 4, 10):  # done
            manifest.pending(keys[i], i)
            manifest.done(keys[i], job_id=str(i), files=[], output=["u"], seed=i)
        manifest.pending(keys[5], 5)
        manifest.submitted(keys[5], "5")  # in flight
        manifest.pending(keys[6], 6)  # never accepted: sent again
    for max_images in (None, 9, 7):
        CountingDraft.built = 0
        drafts: list[Any] = [CountingDraft(dba.Text2Img, a) for a in arguments]
        drafts.append(("mine", CountingDraft(dba.Text2Img, {"model_id": "m", "prompt": "keyed"})))
        options: dict[str, Any] = {"manifest": path, "max_images": max_images}
        planned = plan_run(drafts, api_version="v6", base_url="", **options)
        built = plan_run(requests, api_version="v6", base_url="", **options)
        assert planned == built
        assert (planned.done, planned.in_flight) == (5, 1)
        assert CountingDraft.built == 11 - 6  # the covered six are never built

    # With nothing in the manifest, every draft is built (and keyed from its request).
    CountingDraft.built = 0
    empty = tmp_path / "none.jsonl"
    drafts = [CountingDraft(dba.Text2Img, a) for a in arguments]
    planned = plan_run(drafts, api_version="v6", base_url="", manifest=empty)
    assert planned == plan_run(requests[:10], api_version="v6", base_url="", manifest=empty)
    assert CountingDraft.built == 10 and planned.submissions == 10


def dry_run(prompts: Path, out: Path) -> tuple[int, str]:
    answer = io.StringIO()
    with contextlib.redirect_stdout(answer), contextlib.redirect_stderr(answer):
        code = cli.main([*emulator_generate_args(prompts, out), "--dry-run"])
    return code, answer.getvalue()


def test_a_rerun_dry_run_keys_and_checks_every_row_it_covers(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows: list[dict[str, Any]] = [{"prompt": f"a study {i}"} for i in range(6)]
    rows += [{"prompt": "again"}, {"prompt": "again"}, {"prompt": "mine", "key": "k1"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(emulator_generate_args(prompts, out)) == 0
    code, said = dry_run(prompts, out)
    assert code == 0 and "dry run: 0 submissions, 0 images; covered: 9 done" in said

    # A changed row is another request: not mistaken for the done one.
    rows[2] = {"prompt": "a study 2, changed"}
    rows[7] = {"prompt": "again", "steps": 29}
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, said = dry_run(prompts, out)
    assert code == 0 and "dry run: 2 submissions, 2 images; covered: 7 done" in said

    # A row the manifest holds as done but that makes no valid request now (written by hand
    # here; a stricter release, say) is refused as the run would refuse it, not counted done.
    bad: dict[str, Any] = {
        "model_id": "midjourney",
        "prompt": "too many steps",
        "steps": 99,
        "seed": 7,
    }
    with attrs.validators.disabled():
        key = dba.request_key(dba.Text2Img(**bad))
    with dba.Manifest.open(out / cli.MANIFEST_NAME, durable=False) as manifest:
        manifest.pending(key, 9)
        manifest.done(key, job_id="9", files=[], output=["u"], seed=7)
    rows.append({"prompt": "too many steps", "steps": 99, "seed": 7})
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, said = dry_run(prompts, out)
    fresh_code, fresh_said = dry_run(prompts, tmp_path / "empty")
    assert code == fresh_code == 2
    assert said == fresh_said and "prompts.jsonl:10: " in said and "steps=99" in said
