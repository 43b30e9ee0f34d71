"""Turn a prompts file into an image dataset: images plus one metadata line per image.

    DREAMBOOTH_API_KEY=... python examples/bulk_dataset.py prompts.txt dataset/

writes::

    dataset/images/<key>-<n>.png     every output image
    dataset/metadata.jsonl           {"file", "prompt", "seed", "job_id", "key"} per image
    dataset/manifest.jsonl           the batch's record: what was submitted, what finished

Run it again after a crash, a Ctrl-C or a network outage: the manifest makes the rerun skip
what is done, wait by id for jobs the service already accepted (no paying twice), and submit
only the rest. ``--concurrency`` is left to adapt to the account's queue slots by default.

Against the local emulator::

    python -m dreambooth_async.emulator --port 7860 --time-scale 0.05 &
    DREAMBOOTH_API_KEY=emulator-key python examples/bulk_dataset.py \\
        dreambooth_async/data/demo_prompts.txt dataset/ --base-url http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import dreambooth_async as dba


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and ``#`` comments are skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


async def build_dataset(
    prompts: list[str],
    out: Path,
    *,
    base_url: str,
    model_id: str,
    concurrency: int | None,
    size: int,
    seed: int,
) -> int:
    """Generate every prompt into ``out``; return the number of items that failed."""
    images = out / "images"
    requests = [
        # A fixed seed per prompt makes the dataset reproducible, and the requests (hence
        # their manifest keys) the same on every rerun.
        dba.Text2Img(model_id=model_id, prompt=prompt, width=size, height=size, seed=seed + i)
        for i, prompt in enumerate(prompts)
    ]
    rows: list[tuple[int, dict[str, object]]] = []
    failed = 0
    async with (
        dba.DreamboothClient(base_url=base_url) as client,
        client.map(
            requests,
            concurrency,
            manifest=out / "manifest.jsonl",
            download_to=images,
            progress=True,
        ) as run,
    ):
        async for item in run:
            if not item.ok:
                failed += 1
                print(f"item {item.index} failed: {item.error}", file=sys.stderr)
                continue
            assert item.result is not None
            for file in item.files:
                row = {
                    "file": file.relative_to(out.resolve()).as_posix(),
                    "prompt": item.request.prompt,
                    "seed": item.result.seed,
                    "job_id": item.job_id,
                    "key": item.key,
                }
                rows.append((item.index, row))
    # The metadata is derived from the run (a rerun yields resumed items too), so it is
    # rewritten whole, in prompt order, and replaced atomically.
    partial = out / "metadata.jsonl.part"
    with partial.open("w", encoding="utf-8") as metadata:
        for _, row in sorted(rows, key=lambda pair: pair[0]):
            metadata.write(json.dumps(row) + "\n")
    os.replace(partial, out / "metadata.jsonl")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("prompts", type=Path, help="a text file, one prompt per line")
    parser.add_argument("out", type=Path, help="the dataset folder (created if missing)")
    parser.add_argument(
        "--base-url", default=os.environ.get("DREAMBOOTH_BASE_URL", dba.DEFAULT_BASE_URL)
    )
    parser.add_argument("--model-id", default="midjourney")
    parser.add_argument("--concurrency", type=int, default=None, help="default: adapt")
    parser.add_argument("--size", type=int, default=512, help="width and height in pixels")
    parser.add_argument("--seed", type=int, default=1, help="the first prompt's seed")
    args = parser.parse_args(argv)
    prompts = read_prompts(args.prompts)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = asyncio.run(
        build_dataset(
            prompts,
            args.out,
            base_url=args.base_url,
            model_id=args.model_id,
            concurrency=args.concurrency,
            size=args.size,
            seed=args.seed,
        )
    )
    print(f"{len(prompts) - failed} of {len(prompts)} prompts done; dataset in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
