"""One conversion of a request field's value (``_convert.structure_field``): text from a
prompts file or an option, JSON from a JSONL row or a result's meta, and the wire form all
read by the same rules, taken from the request classes' field types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dreambooth_async as dba
from dreambooth_async._convert import REQUEST_CLASSES, structure_field, value_type
from dreambooth_async._wire import from_wire, to_wire
from dreambooth_async.cli import PromptSource

SAME_VALUE: list[tuple[str, list[Any], Any]] = [
    # field, the ways it arrives (text, JSON, wire), the value the request holds
    ("steps", ["30", " 30 ", 30, 30.0], 30),
    ("seed", ["7", 7, 7.0], 7),
    ("clip_skip", ["2", 2], 2),
    ("guidance_scale", ["7.5", 7.5], 7.5),
    ("guidance_scale", ["7", 7, 7.0], 7.0),
    ("safety_checker", ["yes", "Yes", " true ", "on", "1", "y", True], True),
    ("safety_checker", ["no", "FALSE", "off", "0", "n", False], False),
    ("track_id", [5], 5),
    ("track_id", ["abc"], "abc"),
    ("scheduler", ["DDIMScheduler"], "DDIMScheduler"),
    ("negative_prompt", [None], None),
]


@pytest.mark.parametrize(("field", "given", "expected"), SAME_VALUE)
def test_a_field_reads_alike_from_text_json_and_the_wire(
    field: str, given: list[Any], expected: Any
) -> None:
    for value in given:
        converted = structure_field(dba.Text2Img, field, value)
        assert converted == expected and type(converted) is type(expected), value


REFUSED: list[tuple[str, Any, str]] = [
    ("steps", "many", "steps: expected an integer, got 'many'"),
    ("steps", True, "steps: expected an integer, got True"),
    ("steps", 2.5, "steps: expected an integer, got 2.5"),
    ("guidance_scale", "high", "guidance_scale: expected a number, got 'high'"),
    ("guidance_scale", False, "guidance_scale: expected a number, got False"),
    ("safety_checker", "maybe", "safety_checker: expected yes or no, got 'maybe'"),
    ("safety_checker", 1, "safety_checker: expected yes or no, got 1"),
    ("model_id", 5, "model_id: expected text, got 5"),
    ("track_id", True, "track_id: expected text, got True"),
    ("scheduler", ["DDIMScheduler"], "scheduler: expected text, got ['DDIMScheduler']"),
]


@pytest.mark.parametrize(("field", "value", "message"), REFUSED)
def test_a_value_that_is_not_the_fields_type_is_refused_by_name(
    field: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        structure_field(dba.Text2Img, field, value)
    assert str(caught.value) == message


def test_the_types_come_from_the_request_classes() -> None:
    assert value_type(dba.Text2Img, "steps") is int
    assert value_type(dba.Text2Img, "guidance_scale") is float
    assert value_type(dba.Text2Img, "safety_checker") is bool
    assert value_type(dba.Text2Img, "scheduler") is dba.Scheduler
    assert value_type(dba.Img2Img, "strength") is float
    assert set(REQUEST_CLASSES) == {"text2img", "img2img", "inpaint"}
    with pytest.raises(KeyError):
        structure_field(dba.Text2Img, "strength", "0.5")  # not a text2img field


def test_a_prompts_file_and_the_wire_make_the_same_request(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "prompt,steps,guidance_scale,safety_checker,seed,scheduler,clip_skip\n"
        "a red cube,20,7.5,on,11,DDIMScheduler,2\n"
    )
    source = PromptSource(
        path=prompts, fmt="csv", defaults={"model_id": "m"}, kind=None, derive_seeds=False
    )
    source.validate()
    (request,) = list(source.requests())
    assert isinstance(request, dba.Text2Img)
    assert (request.steps, request.guidance_scale, request.safety_checker) == (20, 7.5, True)
    assert (request.seed, request.scheduler, request.clip_skip) == (11, "DDIMScheduler", 2)
    for version in ("v3", "v6", "v7"):
        assert from_wire(to_wire(request, version), "text2img", version) == request


def test_a_wire_body_with_a_bad_value_names_the_field() -> None:
    body = to_wire(dba.Text2Img(model_id="m", prompt="p"), "v6")
    with pytest.raises(ValueError, match="not a text2img wire body: width: expected an integer"):
        from_wire({**body, "width": "wide"}, "text2img", "v6")
    with pytest.raises(ValueError, match=r"not a text2img wire body: .*model_id"):
        from_wire({k: v for k, v in body.items() if k != "model_id"}, "text2img", "v6")
