"""Planning at scale: request keys that stay what manifests on disk hold, compact digest tables,
the manifest kept as where its finished items' lines are, and the one-pass dry run."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import random
import tracemalloc
from pathlib import Path
from typing import Any

import attrs
import pytest
from _cli_commands import emulator_generate_args

import dreambooth_async as dba
from dreambooth_async import cli
from dreambooth_async._batch import images_paid, plan_run
from dreambooth_async._digests import DigestCounter, DigestTable, TextSet
from dreambooth_async._manifest import index_manifest
from dreambooth_async._request_keys import _canonical_value


def reference_key(request: dba.GenerationRequest) -> str:
    """The key as the first implementation computed it, field by field (what every manifest
    written so far holds)."""
    fields = attrs.asdict(request, recurse=False)
    canonical = {"kind": request.kind, **{k: _canonical_value(v) for k, v in fields.items()}}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=10).hexdigest()


def test_keys_are_the_ones_manifests_on_disk_hold() -> None:
    # Computed by the release before this change: a manifest written then resumes now.
    assert dba.request_key(dba.Text2Img(model_id="midjourney", prompt="a lighthouse", seed=1)) == (
        "c7ae8c70372c967f7642"
    )
    image = dba.Img2Img(
        model_id="m",
        prompt="x",
        init_image=b"abc",
        strength=0.5,
        scheduler="DDIMScheduler",
        extra={"b": [1, {"z": 2.5}], "a": None},
    )
    assert dba.request_key(image) == "7dcc3732ae0908f9e16c"
    inpaint = dba.Inpaint(
        model_id="m",
        prompt='é \u2028 "q"',
        init_image=pathlib.Path("/etc/hosts"),
        mask_image="https://x.example/m.png",
        guidance_scale=7,
        track_id=5,
    )
    assert dba.request_key(inpaint) == "2d6108233de7436cc8f6"


VALUES: dict[str, list[Any]] = {
    "negative_prompt": [None, "blur", 'ünïcode \\ "quoted"'],
    "width": [512, 64],
    "height": [512, 1024],
    "samples": [1, 4],
    "steps": [30, 1],
    "safety_checker": [None, True, False],
    "enhance_prompt": [None, False],
    "guidance_scale": [None, 7, 7.5, 1e-0],
    "scheduler": [None, "LCMScheduler", dba.Scheduler.DDIMScheduler],
    "seed": [None, 0, 2**32 - 1],
    "webhook": [None, "https://hooks.example/x?y=1"],
    "track_id": [None, 7, "seven"],
    "lora_strength": [None, "0.6"],
    "clip_skip": [None, 2],
    "extra": [{}, {"x": 1}, {"b": {"d": [1, 2.5, None], "c": "é"}, "a": True}],
}


def random_requests(count: int) -> list[dba.GenerationRequest]:
    rng = random.Random(24)
    made: list[dba.GenerationRequest] = []
    for i in range(count):
        fields = {name: rng.choice(values) for name, values in VALUES.items()}
        fields["prompt"] = f"prompt {i} " + rng.choice(["", "ü", "\u2028", "😀"])
        kind = rng.choice(("text2img", "img2img", "inpaint"))
        if kind == "text2img":
            made.append(dba.Text2Img(model_id="m", **fields))
            continue
        image = rng.choice([b"\x89PNG bytes", "https://img.example/a.png", Path(__file__)])
        fields["strength"] = rng.choice([0.7, 0.25])
        if kind == "img2img":
            made.append(dba.Img2Img(model_id="m", init_image=image, **fields))
        else:
            made.append(dba.Inpaint(model_id="m", init_image=image, mask_image=image, **fields))
    return made


def test_keys_equal_the_field_by_field_form_for_every_shape_of_request() -> None:
    for request in random_requests(600):
        assert dba.request_key(request) == reference_key(request), request


def test_a_change_in_any_field_changes_the_key() -> None:
    base: dict[type, dba.GenerationRequest] = {
        dba.Text2Img: dba.Text2Img(model_id="m", prompt="p"),
        dba.Img2Img: dba.Img2Img(model_id="m", prompt="p", init_image=b"one"),
        dba.Inpaint: dba.Inpaint(model_id="m", prompt="p", init_image=b"one", mask_image=b"m"),
    }
    changed = {
        "model_id": "other",
        "prompt": "q",
        "init_image": b"two",
        "mask_image": b"n",
        "strength": 0.5,
        "embeddings_model": "e",
        "lora_model": "l",
        "algorithm_type": "a",
        "vae": "v",
        "safety_checker_type": "s",
        "multi_lingual": True,
        "panorama": True,
        "self_attention": True,
        "upscale": True,
        "tomesd": True,
        "use_karras_sigmas": True,
        "highres_fix": True,
        "temp": True,
        **{name: values[-1] for name, values in VALUES.items()},
    }
    for cls, request in base.items():
        keys = {dba.request_key(request)}
        for field in attrs.fields(cls):
            other = attrs.evolve(request, **{field.name: changed[field.name]})
            keys.add(dba.request_key(other))
        assert len(keys) == len(attrs.fields(cls)) + 1, cls
    # The kind counts too: the same fields as another kind are another request.
    assert len({dba.request_key(r) for r in base.values()}) == 3


# --- compact tables ---------------------------------------------------------------------------


def test_digest_tables_count_and_find_what_they_hold() -> None:
    counter = DigestCounter(8)
    digests = [os.urandom(8) for _ in range(5000)]
    assert [counter.add(d) for d in digests] == [1] * 5000
    assert counter.add(digests[7]) == 2 and counter.add(digests[7]) == 3
    assert counter.add(digests[8]) == 2 and len(counter) == 5000

    table = DigestTable(8, 4)
    first = b"\x00\x00" + b"ABCDEF"
    assert table.put(first, b"GHIJ") and table.put(b"\x00\x00EFGHIJ", b"1234")
    assert table.get(first) == b"GHIJ" and table.get(b"\x00\x00EFGHIJ") == b"1234"
    assert not table.put(first, b"zzzz") and table.get(first) == b"zzzz" and len(table) == 2
    assert sorted(table.payloads()) == [b"1234", b"zzzz"]
    table.discard(first)
    assert table.get(first) is None and len(table) == 1

    # One bucket holding 00 01 00 01 | 00 02 00 00: the digest 00 01 00 02 is in it, across
    # the two records, and is not a member.
    members = DigestTable(4)
    assert members.add(b"\x00\x01\x00\x01") and members.add(b"\x00\x02\x00\x00")
    assert b"\x00\x01\x00\x02" not in members and members.add(b"\x00\x01\x00\x02")
    assert not members.add(b"\x00\x02\x00\x00") and len(members) == 3

    # Grown past its first buckets, it still finds every digest.
    grown = DigestTable(8)
    many = [os.urandom(8) for _ in range(20_000)]
    assert all(grown.add(d) for d in many) and all(d in grown for d in many)

    names = TextSet(["a.png", "b.png"])
    assert "a.png" in names and "c.png" not in names and not names.add("a.png")
    assert names.add("c.png") and len(names) == 3


def test_a_seen_digest_costs_a_few_dozen_bytes_not_a_dict_entry() -> None:
    digests = [os.urandom(10) for _ in range(100_000)]
    tracemalloc.start()
    try:
        counter = DigestCounter(10)
        before = tracemalloc.get_traced_memory()[0]
        for digest in digests:
            counter.add(digest)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(digests)
    finally:
        tracemalloc.stop()
    # A dict of hex keys to counts: about 150 bytes an entry.
    assert per_entry < 40, per_entry


# --- the manifest as an index -----------------------------------------------------------------


def write_varied_manifest(path: Path) -> None:
    with dba.Manifest.open(path, durable=False) as manifest:
        for i in range(300):
            key = f"item-{i}"
            manifest.pending(key, i)
            manifest.submitting(key, 1)
            manifest.submitted(key, str(i), fetch_url=f"https://f.example/{i}", key_index=i % 2)
            manifest.done(key, job_id=str(i), files=[f"{key}-0.png"], output=["u1", "u2"], seed=i)
        manifest.pending("failed", 300)
        manifest.submitting("failed", 1)
        manifest.failed("failed", ValueError("no"), job_id="77")
        manifest.pending("ambiguous", 301)
        manifest.submitting("ambiguous", 1)
        manifest.ambiguous("ambiguous", TimeoutError("t"), detail="lost")
        manifest.pending("flying", 302)
        manifest.submitting("flying", 1)
        manifest.submitted("flying", "88")
        manifest.pending("waiting", 303)
        # Done without a job id on its line (a cache hit): kept whole, the job id it had.
        manifest.pending("cached", 304)
        manifest.submitting("cached", 1)
        manifest.submitted("cached", "99")
        manifest.done("cached", job_id=None, files=["c.png"], output=[], seed=None)
        # Lines after done (what restoring a lost upload writes, with what it read of the item):
        # the done line is read back and folded on.
        manifest.submitted("item-5", "5", fetch_url="https://f.example/5", key_index=1)


def test_the_index_holds_what_read_manifest_folds(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_varied_manifest(path)
    full = dba.read_manifest(path)
    index = index_manifest(path)
    try:
        assert len(index) == len(full) == 305
        assert set(index) == set(full)
        kept = ("key", "status", "index", "job_id", "files", "output", "seed")
        for key, state in full.items():
            got = index[key]
            if state.status == "done" and key != "cached":
                # A finished item read back: what its done line and its index say.
                assert {n: getattr(got, n) for n in kept} == {n: getattr(state, n) for n in kept}
            else:
                assert got == state, key
            assert index.status(key) == state.status and index.index_of(key) == state.index
        assert index.get("nothing") is None and index.status("nothing") is None
        assert index["item-5"].status == "submitted" and index["item-5"].job_id == "5"
        assert index.images_paid() == images_paid(full.values())
        assert {s.key for s in index.unsettled()} >= {"failed", "ambiguous", "flying", "waiting"}
    finally:
        index.close()


def test_a_finished_item_costs_a_few_dozen_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with dba.Manifest.open(path, durable=False) as manifest:
        for i in range(20_000):
            key = hashlib.blake2b(str(i).encode(), digest_size=10).hexdigest()
            manifest.pending(key, i)
            manifest.submitting(key, 1)
            manifest.submitted(key, str(i), fetch_url=f"https://f.example/{i}")
            url = f"https://pub.example/{key}-0.png"
            manifest.done(key, job_id=str(i), files=[f"{key}-0.png"], output=[url], seed=i)
    tracemalloc.start()
    try:
        index = index_manifest(path)
        per_item = tracemalloc.get_traced_memory()[0] / 20_000
    finally:
        tracemalloc.stop()
    index.close()
    assert len(index) == 20_000
    assert per_item < 64, per_item  # read_manifest keeps about a kilobyte


def test_a_batch_resumes_from_the_index(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a study {i}\n" for i in range(12)))
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(emulator_generate_args(prompts, out)) == 0
        first = (out / cli.METADATA_NAME).read_text()
        # Nothing paid again, every item skipped from the manifest, the same rows kept.
        answer = io.StringIO()
        with contextlib.redirect_stdout(answer):
            assert cli.main(emulator_generate_args(prompts, out)) == 0
    assert "done 12 (12 from an earlier run)" in answer.getvalue()
    assert "0 new metadata rows" in answer.getvalue()
    assert (out / cli.METADATA_NAME).read_text() == first


# --- the dry run ------------------------------------------------------------------------------


def dry_run(prompts: Path, out: Path, *extra: str) -> tuple[int, str]:
    answer = io.StringIO()
    with contextlib.redirect_stdout(answer), contextlib.redirect_stderr(answer):
        code = cli.main([*emulator_generate_args(prompts, out), "--dry-run", *extra])
    return code, answer.getvalue()


def test_the_dry_run_plans_in_one_pass_and_still_checks_every_row(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"p {i}"} for i in range(5)] + [{"prompt": "same"}, {"prompt": "same"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, said = dry_run(prompts, tmp_path / "out")
    assert code == 0 and "dry run: 7 submissions, 7 images" in said
    assert not (tmp_path / "out").exists()  # nothing written

    prompts.write_text(
        json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "x", "steps": 99})
    )
    code, said = dry_run(prompts, tmp_path / "out")
    assert code == 2 and "prompts.jsonl:2" in said and "steps" in said

    keyed = [{"prompt": "a", "key": "k"}, {"prompt": "b", "key": "k"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in keyed))
    code, said = dry_run(prompts, tmp_path / "out")
    assert code == 2 and "duplicate key 'k'" in said

    prompts.write_text("\n\n")
    code, said = dry_run(prompts, tmp_path / "out")
    assert code == 2 and "no prompts" in said


def test_plan_run_over_a_finished_manifest(tmp_path: Path) -> None:
    requests = [dba.Text2Img(model_id="m", prompt="same") for _ in range(3)]
    requests += [dba.Text2Img(model_id="m", prompt=f"p {i}", seed=i) for i in range(4)]
    path = tmp_path / "m.jsonl"
    keys = [dba.request_key(r) for r in requests]
    keys[1], keys[2] = f"{keys[1]}.2", f"{keys[2]}.3"  # repeats are numbered
    with dba.Manifest.open(path, durable=False) as manifest:
        for i, key in enumerate(keys[:5]):
            manifest.pending(key, i)
            manifest.done(key, job_id=str(i), files=[], output=["u"], seed=i)
        manifest.pending(keys[5], 5)
        manifest.submitted(keys[5], "5")
    plan = plan_run(requests, api_version="v6", base_url="", manifest=path)
    assert (plan.items, plan.done, plan.in_flight, plan.submissions) == (7, 5, 1, 1)
    budget = plan_run(requests, api_version="v6", base_url="", manifest=path, max_images=6)
    assert (budget.submissions, budget.over_budget) == (0, 1)  # 5 done + 1 in flight paid


@pytest.mark.parametrize("count", [1, 3])
def test_the_dry_run_counts_samples(tmp_path: Path, count: int) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    code, said = dry_run(prompts, tmp_path / "out", "--samples", str(count))
    assert code == 0 and f"2 submissions, {2 * count} images" in said
