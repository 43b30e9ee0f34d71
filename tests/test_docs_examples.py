"""Every Python block of README.md and docs/guide/*.md runs as written against the emulator.

A page's blocks run in order in one namespace, as the cells of an asyncio notebook would (top
level ``await`` allowed), in a fresh folder holding a ``prompts.txt``, with
``DREAMBOOTH_BASE_URL`` and ``DREAMBOOTH_API_KEY`` naming a time-scaled emulator that runs on
a thread of its own (so the blocking client works too). A block marked as a fragment,
```` ```python test="skip" ````, is not run; a block that only includes a file of
``examples/`` (``--8<-- "examples/x.py"``) is run by tests/test_examples.py instead.

The emulator's record is checked after each page: no request reached it twice (the docs never
pay twice for one image), and nothing was paid for a prompts file's comments.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import re
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

import dreambooth_async as dba
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

pytest_examples = pytest.importorskip("pytest_examples")

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
# Jobs of a few service seconds, a hundredth of that in real time; answered on the submitting
# request (a long sync window), so the examples' real-time polling never waits.
QUICK = CostModel(base=2, per_step=0.05, per_sample=0.5, per_megapixel=0, noise=0)
SCALE = 0.005
# The prompts file a page's code reads: comments, blanks and stray whitespace as users write
# them, and the same prompts a page may send once more with other settings.
PROMPTS_TXT = "# prompts for the docs\n\n  a red fox in the snow  \n#a comment\na heron\n\n"
PROMPTS = ["a red fox in the snow", "a heron"]
INCLUDE = re.compile(r'^--8<--\s*"(?P<path>[^"]+)"\s*$')
# Third-party libraries a block may need beyond the test extra; such a block is skipped, said.
OPTIONAL = {"fastapi", "datasets"}


def examples(page: Path) -> list[Any]:
    return list(pytest_examples.find_examples(page))


def is_fragment(example: Any) -> bool:
    return bool(example.prefix_settings().get("test") == "skip")


def included_file(example: Any) -> Path | None:
    """The file a block only includes (pymdownx.snippets), or None."""
    match = INCLUDE.match(example.source.strip())
    return ROOT / match["path"] if match else None


@contextlib.contextmanager
def emulator_thread(config: EmulatorConfig) -> Iterator[Emulator]:
    """An emulator on an event loop in another thread, for code that blocks this one."""
    with start_blocking_portal("asyncio") as portal:
        emu = Emulator(config)
        portal.call(emu.start)
        try:
            yield emu
        finally:
            portal.call(emu.aclose)


class Kernel:
    """Runs the cells that ``await``, one after another in ONE task on a loop in a thread of its
    own, as a Jupyter kernel does: a client started in one cell closes in a later one (its task
    group is entered and left in the same task). Cells without ``await`` run in the caller's
    thread, as ``python script.py`` would run them (``asyncio.run()`` works there)."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbox: asyncio.Queue[tuple[Any, dict[str, Any], Future[None]] | None]
        self._inbox = asyncio.Queue()
        self._ready.set()
        while (cell := await self._inbox.get()) is not None:
            code, namespace, done = cell
            try:
                await eval(code, namespace)
            except BaseException as exc:  # handed to the caller, which raises it
                done.set_exception(exc)
            else:
                done.set_result(None)

    def run(self, code: Any, namespace: dict[str, Any]) -> None:
        done: Future[None] = Future()
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, (code, namespace, done))
        done.result()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, None)
        self._thread.join()


def run_cells(blocks: list[Any], namespace: dict[str, Any]) -> list[str]:
    """Run the blocks in order as notebook cells; returns what was skipped and why."""
    skipped = []
    kernel = Kernel()
    try:
        for example in blocks:
            # Padded so that a traceback names the page's own line numbers.
            source = "\n" * example.start_line + textwrap.dedent(example.source)
            code = compile(source, str(example.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            try:
                if code.co_flags & inspect.CO_COROUTINE:
                    kernel.run(code, namespace)
                else:
                    exec(code, namespace)
            except ModuleNotFoundError as exc:
                if exc.name not in OPTIONAL:
                    raise
                skipped.append(f"{example}: needs {exc.name}")
    finally:
        kernel.close()
    return skipped


def run_page(page: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    blocks = [e for e in examples(page) if not is_fragment(e) and included_file(e) is None]
    config = EmulatorConfig(time_scale=SCALE, sync_window=10_000, cost=QUICK)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.txt").write_text(PROMPTS_TXT)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MODELSLAB_API_KEY", raising=False)
    with emulator_thread(config) as emu:
        monkeypatch.setenv("DREAMBOOTH_BASE_URL", emu.base_url)
        monkeypatch.setenv("DREAMBOOTH_API_KEY", emu.key)
        skipped = run_cells(blocks, {"__name__": "__main__"})
    # The docs never pay twice for one request (map() then gather() on one list, say).
    assert emu.stats.duplicate_requests() == {}, [
        (job.params.prompt, job.params.seed) for job in emu.jobs.values()
    ]
    if skipped:
        pytest.skip("; ".join(skipped))
    return emu


@pytest.mark.parametrize(
    "page",
    [
        page
        for page in PAGES
        if any(not is_fragment(e) and included_file(e) is None for e in examples(page))
    ],
    ids=lambda page: str(page.relative_to(ROOT)),
)
def test_page_examples_run_against_the_emulator(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = run_page(page, tmp_path, monkeypatch)
    sent = [job.params.prompt for job in emu.jobs.values()]
    # A prompts file's comments and blank lines are never paid for, nor sent with line ends.
    assert not any(prompt.lstrip().startswith("#") or prompt != prompt.strip() for prompt in sent)


def test_fragments_are_few_and_only_marked_ones_are_left_out() -> None:
    fragments = [e for page in PAGES for e in examples(page) if is_fragment(e)]
    runnable = [e for page in PAGES for e in examples(page) if not is_fragment(e)]
    assert len(runnable) > 3 * len(fragments), [str(e) for e in fragments]
    for example in runnable:
        included = included_file(example)
        if included is not None:
            # Run by tests/test_examples.py, exactly as a user starts them.
            assert included.is_file() and included.parent == ROOT / "examples", example


def test_readme_task_5_reads_a_prompts_file_as_the_command_line_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Task 5's own lines, fed text, JSONL and CSV files with comments, blanks and fields.
    (readme,) = [e for e in examples(ROOT / "README.md") if "# 5." in e.source]
    lines = readme.source.splitlines()
    start = next(i for i, line in enumerate(lines) if "# 5." in line)
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
    task = textwrap.dedent("\n".join(lines[start:end]))
    assert 'read_prompts("prompts.txt"' in task
    files = {
        "prompts.txt": (PROMPTS_TXT, PROMPTS, {}),
        "prompts.jsonl": (
            '{"prompt": "an owl", "seed": 3, "width": 640}\n\n'
            '{"prompt": "a lynx", "steps": 12, "key": "lynx"}\n',
            ["an owl", "a lynx"],
            {"an owl": (3, 640)},
        ),
        "prompts.csv": (
            'prompt,seed,width\na kite,5,768\n,,\n"a boat, at dusk",6,\n',
            ["a kite", "a boat, at dusk"],
            {"a kite": (5, 768)},
        ),
    }
    for name, (text, expected, fields) in files.items():
        folder = tmp_path / name.replace(".", "-")
        folder.mkdir()
        (folder / name).write_text(text)
        monkeypatch.chdir(folder)
        config = EmulatorConfig(time_scale=SCALE, sync_window=10_000, cost=QUICK)
        with emulator_thread(config) as emu:
            code = task.replace('"prompts.txt"', f'"{name}"')
            cell = "async with dba.DreamboothClient(key, base_url=url) as client:\n"
            cell += textwrap.indent(code, "    ")
            namespace = {"dba": dba, "key": emu.key, "url": emu.base_url}
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                asyncio.run(_run_cell(cell, namespace))
        jobs = list(emu.jobs.values())
        # One paid job per prompt, none for a comment or a blank line, and nothing aborted.
        assert sorted(job.params.prompt for job in jobs) == sorted(expected), name
        assert emu.stats.submissions_received == len(expected), name
        for job in jobs:
            if job.params.prompt in fields:
                assert (job.params.seed, job.params.width) == fields[job.params.prompt]
        shown = printed.getvalue()
        assert shown.count("\n") == len(expected) and "Error" not in shown, shown
        assert (folder / "run.jsonl").is_file() and any((folder / "images").iterdir())


async def _run_cell(cell: str, namespace: dict[str, Any]) -> None:
    code = compile(cell, "<README task 5>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    await eval(code, namespace)


def test_the_sync_guide_pays_once_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page once sent one list through map() and then gather(): every image paid twice.
    emu = run_page(ROOT / "docs" / "guide" / "sync.md", tmp_path, monkeypatch)
    assert emu.stats.submissions_accepted == len(emu.stats.accepted_by_request) > 0


def test_fragment_blocks_still_render_as_highlighted_code() -> None:
    markdown = pytest.importorskip("markdown")
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml names Python objects (!!python/name) that a safe loader need not build.
    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)
    extensions: list[str] = []
    configs: dict[str, Any] = {}
    for entry in config["markdown_extensions"]:
        if isinstance(entry, dict):
            ((name, options),) = entry.items()
            extensions.append(name)
            configs[name] = options or {}
        else:
            extensions.append(entry)
    configs.pop("pymdownx.snippets", None)
    extensions.remove("pymdownx.snippets")
    html = markdown.markdown(
        'text\n\n```python test="skip"\nx = 1\n```\n',
        extensions=extensions,
        extension_configs=configs,
    )
    assert 'class="highlight"' in html and "test=" not in html, html
