"""The poller against the service as documented today, and its pace relative to each job.

- A job the service accepted ends only on an answer that ends it: the fetch page's id-less,
  ETA-less "processing" keeps it pending; "not found" right after acceptance is asked again for
  a bounded time; an answer no rule covers ends it only after that time, with an error that
  names the job.
- The result keeps the processing answers' ``meta`` when the v3/v4 fetch answer has none.
- The default policy has no absolute notion of "fast": its waits scale with the job's ETA and
  age, and its ETA model learns the service's bias from the first jobs that finish.

Integration tests talk HTTP to the emulator or to a scripted server on 127.0.0.1; the few unit
tests drive the poller's planning with explicit times. No test asserts a timing.
"""

from __future__ import annotations

import asyncio
import random

import anyio
import attrs
import pytest
from _emulator_fixtures import poller_config
from replay_server import ReplayServer, Reply, fast_client_options

import dreambooth_async as dba
from dreambooth_async._eta import EtaModel, FinishedJob
from dreambooth_async._fetch_timing import FetchPlanner
from dreambooth_async._job import new_state
from dreambooth_async._poller import Poller
from dreambooth_async.emulator import DEFAULT_KEY, Emulator

pytestmark = pytest.mark.anyio


def request(i: int = 0) -> dba.Text2Img:
    return dba.Text2Img(model_id="midjourney", prompt=f"a harbour at dusk {i}", seed=1000 + i)


# --- documented answers, through the emulator --------------------------------------------------


async def test_idless_processing_answers_keep_the_job_pending_to_its_result() -> None:
    # Every "processing" fetch answer in the docs' form: no id, no eta, output "".
    async with (
        Emulator(poller_config(idless_processing_rate=1.0)) as emu,
        dba.DreamboothClient(
            DEFAULT_KEY, base_url=emu.base_url, api_version="v6", poll=dba.PollPolicy()
        ) as client,
    ):
        jobs = [await client.submit(request(i)) for i in range(4)]
        results = await asyncio.gather(*(job.wait() for job in jobs))
        assert [r.id for r in results] == [job.id for job in jobs]
        assert all(r.output for r in results)
        assert emu.stats.idless_processing > 0  # the answers were seen, and not fatal


@pytest.mark.parametrize("api_version", ["v3", "v4"])
async def test_the_seed_of_the_processing_answer_reaches_the_result(api_version: str) -> None:
    # The v3/v4 fetch answer is {status, id, output}: without the processing answer's meta
    # the seed that ran is lost.
    async with (
        Emulator(poller_config()) as emu,
        dba.DreamboothClient(
            DEFAULT_KEY,
            base_url=emu.base_url,
            api_version=api_version,  # type: ignore[arg-type]
            poll=dba.PollPolicy(),
        ) as client,
    ):
        job = await client.submit(request(7))
        assert not job.done()
        result = await job
        assert result.seed == 1007
        assert result.meta["model_id"] == "midjourney"


# --- answers that say nothing about the job, through a scripted server -------------------------

SUBMIT = "/api/v6/images/text2img"
FETCH = "/api/v6/images/fetch"
ACCEPTED = Reply.json({"status": "processing", "id": 42, "eta": 0.05, "meta": {"seed": 5}})
NOT_FOUND = Reply.json({"status": "error", "message": "Request not found"})
DONE = Reply.json({"status": "success", "id": 42, "output": ["http://127.0.0.1:9/x.png"]})


def options(**poll: object) -> dict[str, object]:
    settings: dict[str, object] = {"job_timeout": 30.0, "explore_every": 0, **poll}
    return fast_client_options(api_version="v6", poll=dba.PollPolicy(**settings))  # type: ignore[arg-type]


async def test_not_found_right_after_acceptance_is_asked_again_until_it_shows() -> None:
    async with ReplayServer() as server:
        server.script(SUBMIT, ACCEPTED)
        # More "not found" answers than the old fixed four failures allowed.
        server.script(FETCH, *[NOT_FOUND] * 5, DONE)
        async with dba.DreamboothClient(base_url=server.url, **options(not_found_grace=50.0)) as c:
            job = await c.submit(dba.Text2Img(model_id="m", prompt="p"))
            with anyio.fail_after(20):
                result = await job
        assert result.id == "42" and result.seed == 5
        assert server.count(FETCH) == 6


async def test_a_job_that_never_shows_fails_with_job_not_found_naming_it() -> None:
    async with ReplayServer() as server:
        server.script(SUBMIT, ACCEPTED)
        server.always(FETCH, NOT_FOUND)
        async with dba.DreamboothClient(base_url=server.url, **options()) as client:
            job = await client.submit(dba.Text2Img(model_id="m", prompt="p"))
            with anyio.fail_after(20), pytest.raises(dba.JobNotFound) as caught:
                await job
        assert caught.value.job_id == "42"
        assert server.count(FETCH) >= 3  # asked again, a bounded number of times


async def test_an_answer_no_rule_covers_ends_the_job_with_an_error_naming_it() -> None:
    odd = Reply.json({"status": "queued_for_review", "id": 42})
    async with ReplayServer() as server:
        server.script(SUBMIT, ACCEPTED)
        server.always(FETCH, odd)
        async with dba.DreamboothClient(base_url=server.url, **options()) as client:
            job = await client.submit(dba.Text2Img(model_id="m", prompt="p"))
            with anyio.fail_after(20), pytest.raises(dba.JobTimeout) as caught:
                await job
        assert caught.value.job_id == "42"
        assert isinstance(caught.value.__cause__, dba.APIError)
        assert "queued_for_review" in str(caught.value.__cause__)
        assert server.count(FETCH) >= 3


async def test_an_odd_answer_between_processing_answers_costs_nothing() -> None:
    odd = Reply.json({"status": "queued_for_review", "id": 42})
    processing = Reply.json({"status": "processing", "messege": "try again later.", "output": ""})
    async with ReplayServer() as server:
        server.script(SUBMIT, ACCEPTED)
        server.script(FETCH, odd, processing, odd, NOT_FOUND, processing, DONE)
        async with dba.DreamboothClient(base_url=server.url, **options()) as client:
            job = await client.submit(dba.Text2Img(model_id="m", prompt="p"))
            with anyio.fail_after(20):
                assert (await job).id == "42"


# --- the pace: relative to the job ------------------------------------------------------------


async def _never(job_id: str, fetch_url: str | None) -> dba.GenerationResult | dba.Processing:
    raise AssertionError("no fetch in a planning test")


async def test_the_same_policy_paces_a_half_second_and_a_five_minute_job_alike() -> None:
    poller = Poller(_never, dba.PollPolicy(explore_every=0))
    waits = {}
    for eta in (0.5, 300.0):
        job = poller.track(dba.Processing(id=f"e{eta}", eta=eta, raw={"status": "processing"}))
        state = job._state
        waits[eta] = (state.due - state.submitted_at) / eta
    assert waits[0.5] == pytest.approx(waits[300.0], rel=0.05)
    assert 0.2 < waits[0.5] < 1.0  # before the ETA's own end: the model starts wide


async def test_a_processing_answer_without_eta_keeps_the_last_estimate() -> None:
    poller = Poller(_never, dba.PollPolicy(explore_every=0))
    job = poller.track(dba.Processing(id="1", eta=10.0, raw={"status": "processing"}))
    state = job._state
    t0 = state.submitted_at
    earliest, latest = poller._window(state)  # type: ignore[misc]
    # The service answers "processing" with no eta (the fetch page's example) a bit later.
    now = t0 + 0.6 * (earliest - t0)
    state.last_fetch = now
    poller._observe_processing(state, dba.Processing(id="1"), now, now)
    assert poller._window(state) == (earliest, latest)  # the estimate still holds
    assert now < state.due <= latest
    assert job.eta == 10.0


async def test_waits_past_every_estimate_are_shares_of_the_job_age() -> None:
    poller = Poller(_never, dba.PollPolicy())
    short = poller.track(dba.Processing(id="s", eta=0.0, raw={"status": "processing"}))._state
    for age in (1.0, 100.0):
        short.submitted_at = 1000.0 - age
        random.seed(3)
        wait = poller._backoff(short, 1000.0, known=True, step=0)
        assert wait == pytest.approx(0.09 * age, rel=0.11)
        # Blind (nothing known at all): half the age, up to the ceiling.
        random.seed(3)
        blind = poller._backoff(short, 1000.0, known=False, step=0)
        assert blind == pytest.approx(min(0.5 * age, 30.0), rel=0.11)


def test_scaled_keeps_working_and_scales_only_absolute_settings() -> None:
    policy = dba.PollPolicy()
    assert policy.min_interval <= 0.05  # the politeness floor
    scaled = policy.scaled(0.01)
    assert scaled.delay_budget == policy.delay_budget
    assert scaled.backoff_factor == policy.backoff_factor
    assert scaled.min_interval == pytest.approx(policy.min_interval * 0.01)
    assert scaled.job_timeout == pytest.approx(18.0)
    assert dba.PollPolicy(initial_interval=2.0).scaled(0.5).initial_interval == 1.0


# --- learning ---------------------------------------------------------------------------------


def _job(rho: float, *, eta: float = 10.0, early: bool = False) -> FinishedJob:
    """A job given ``eta`` at 0 that finished at ``rho * eta`` (``early``: first fetched
    while the model knew nothing), seen again with a short ETA (off by the same factor) just
    before it finished."""
    finish = rho * eta
    seen = finish - 0.02 * eta
    return FinishedJob(
        anchors=((0.0, eta), (seen, (finish - seen) / rho)),
        after=seen,
        by=finish + 0.001 * eta,
        early=early,
    )


@pytest.mark.parametrize("bias", [0.3, -0.3])
def test_the_first_jobs_finished_give_the_bias(bias: float) -> None:
    model = EtaModel()
    assert model.bounds() == (0.5, 1.5)  # the prior: a 30% low ETA is barely inside
    low, high = 1 / ((1 + bias) * 1.05), 1 / ((1 + bias) * 0.95)
    width = high - low
    # A new client fetches its first jobs early (wide prior): they are measured whatever their
    # speed. Six of them, spread as a sample of six would be.
    for k in range(6):
        model.observe_job(_job(low + width * (k + 0.5) / 6, early=True))
    lo, hi = model.bounds()
    assert low - 0.3 * width < lo <= low + 0.1 * width
    assert high - 0.1 * width <= hi < high + 0.3 * width
    assert model.samples >= 6 and model.low_samples >= 3


def _done_at_first(fetched: float, *, eta: float = 10.0) -> FinishedJob:
    """A job given ``eta`` at 0 and found done at its first fetch, at ``fetched * eta``."""
    return FinishedJob(anchors=((0.0, eta),), after=0.0, by=fetched * eta)


def test_the_low_end_stays_put_when_only_slow_jobs_are_measured() -> None:
    # In steady state, only jobs still running at their first fetch are measured: the slow
    # ones. The others are only known to have been faster than that fetch. The measured ones
    # must not drag the low end up (results would wait past their budget).
    rng = random.Random(9)
    model = EtaModel()
    for k in range(8):
        model.observe_job(_job(0.73 + 0.08 * (k + 0.5) / 8, early=True))
    start = model.bounds()[0]
    for _ in range(25):
        model.observe_job(_job(rng.uniform(0.795, 0.81)))
        for _ in range(3):
            model.observe_job(_done_at_first(0.795))
    assert model.bounds()[0] <= start + 0.002


def test_jobs_done_at_their_first_fetch_are_counted_not_dropped() -> None:
    # Jobs spread evenly over 0.6-0.8 of their ETA, first fetched at 0.7: half are found done
    # (only bounded), half measured. Dropping the first half would say that every job runs
    # past 0.7; counted as bounds, they put half of the jobs there, as it should be.
    model = EtaModel()
    for k in range(30):
        model.observe_job(_job(0.7 + 0.1 * (k + 0.5) / 30))
        model.observe_job(_done_at_first(0.7))
    share = model.share_below(0.7)
    assert share is not None and 0.4 <= share <= 0.6
    # How much faster than 0.7 the bounded half was, nothing measured says: the low end
    # reaches at least down to their bound.
    assert model.bounds()[0] <= 0.7


def test_a_finish_placed_by_a_long_last_eta_is_not_taken_as_a_measurement() -> None:
    # Seen "processing" at 0.6 of the ETA with 0.4 of it still to go, then done by 1.06:
    # where the job ended in between only the model could say, and a model that placed it
    # would then measure itself there (and keep itself, were it wrong).
    model = EtaModel()
    for k in range(12):  # measured closely: their last ETA was short
        model.observe_job(_job(1.0 + 0.02 * k / 11, early=True))
    assert model.samples == 12
    for k in range(10):
        model.observe_job(
            FinishedJob(
                anchors=((0.0, 10.0), (6.0, 4.0)),
                after=6.0,
                by=10.6 + 0.01 * k,
                early=True,
            )
        )
    assert model.samples == 12


def test_how_fast_pending_jobs_etas_fall_gives_the_bias_before_any_job_finishes() -> None:
    model = EtaModel()
    # The ETA falls slower than the clock: each reading says ~0.77 (a 30% high ETA).
    for rho in (0.76, 0.78, 0.77):
        model.observe_trend(rho)
    assert model.bounds() == (0.5, 1.5)  # three readings are too few to trust
    model.observe_trend(0.79)
    lo, hi = model.bounds()
    assert 0.5 < lo < 0.76 and 0.79 < hi < 1.0
    # Below, a margin of at least their whole spread; above, half of it.
    assert 0.76 - lo >= hi - 0.79


def test_trend_readings_that_disagree_widely_leave_the_prior() -> None:
    model = EtaModel()
    for rho in (0.7, 1.4, 0.9, 1.2):  # very noisy ETAs
        model.observe_trend(rho)
    assert model.bounds() == (0.5, 1.5)


async def test_jobs_planned_on_the_prior_are_planned_again_when_etas_show_the_bias() -> None:
    poller = Poller(_never, dba.PollPolicy(explore_every=0))
    # Several jobs in flight before any finishes: each planned on the prior alone.
    states = [
        poller.track(dba.Processing(id=str(i), eta=13.0, raw={"status": "processing"}))._state
        for i in range(6)
    ]
    waiting = states[-1]
    planned = waiting.due
    # The first four are fetched: each ETA fell more slowly than the clock ran (30% high).
    for state in states[:4]:
        at = state.submitted_at + 5.0
        state.last_fetch = at
        state.due = float("inf")  # in flight
        eta = 13.0 - 5.0 / 0.77
        poller._observe_processing(state, dba.Processing(id=state.id, eta=eta), at, at)
    assert poller.eta_model.bounds() != (0.5, 1.5)
    # The job still waiting was planned again on what those ETAs showed: later than the prior's
    # low end, as the job cannot be done before about 0.7 of its ETA.
    assert waiting.due > planned
    assert waiting.due - waiting.submitted_at > 0.6 * 13.0


async def test_a_job_whose_estimate_just_ran_out_is_fetched_at_once() -> None:
    policy = dba.PollPolicy(explore_every=0)
    poller = Poller(_never, policy)
    state = poller.track(dba.Processing(id="1", eta=0.6, raw={"status": "processing"}))._state
    # Its fetch finds it nearly done: the window closes before the answer is even planned.
    at = state.submitted_at + 0.55
    state.last_fetch = at
    poller._observe_processing(state, dba.Processing(id="1", eta=0.0001), at, at + 0.004)
    # Not a share of its age (9% of 0.55 s would all be delay): the politeness floor only.
    assert state.due - (at + 0.004) <= policy.min_interval + 1e-9
    # Still running at that fetch: now it overruns its estimate, and waits a share of its age.
    later = state.due + 0.004
    state.last_fetch = later
    poller._observe_processing(state, dba.Processing(id="1", eta=0.0), later, later)
    assert state.due - later > 0.5 * policy.delay_budget * (later - state.submitted_at)


async def test_a_job_planned_again_inside_its_window_keeps_its_allowance() -> None:
    policy = dba.PollPolicy(explore_every=0)
    poller = Poller(_never, policy)
    state = poller.track(dba.Processing(id="1", eta=10.0, raw={"status": "processing"}))._state
    earliest, latest = poller._window(state)  # type: ignore[misc]
    allowed = policy.delay_budget * (earliest - state.submitted_at)
    assert latest - earliest > allowed  # the prior's window is wide
    # Planned again (the model moved) well inside the window: the job may have finished at
    # its earliest, so the fetch still goes by the earliest plus the allowance, not later.
    now = earliest + 0.5 * allowed
    due = poller._planner.plan(state, now)
    assert due <= earliest + allowed + 1e-9


def _probed(*, seen: float, last_eta: float, done_by: float) -> FinishedJob:
    """A probe given an ETA of 10 at 0, found still running at ``seen`` (with ``last_eta``
    left), and done by ``done_by``."""
    return FinishedJob(
        anchors=((0.0, 10.0), (seen, last_eta)),
        after=seen,
        by=done_by,
        probe=True,
    )


def test_a_loose_measurement_below_the_bounds_still_places_the_low_end() -> None:
    # First fetches at 1.03 of the ETA find the fast jobs done; the slow ones are measured
    # closely. A few jobs were caught running at 0.75 with about a tenth of the ETA left, and
    # done by 0.875: placed only to within about 4% (the model's range is wide), they are
    # still all that says how far down the fast jobs go.
    model = EtaModel()
    for k in range(20):
        model.observe_job(_job(1.03 + 0.2 * (k + 0.5) / 20))
        model.observe_job(_done_at_first(1.03))
    assert model.bounds()[0] >= 0.95  # nothing measured below the bounds
    for _ in range(3):
        model.observe_job(_probed(seen=7.5, last_eta=1.0, done_by=8.75))
    assert model.bounds()[0] <= 0.87


def test_one_eta_far_off_does_not_send_every_first_fetch_to_the_start() -> None:
    # A job seen with 3.5 s left and done 0.25 s later: its last ETA was 14 times too long.
    # That says little of the other jobs; the low end stays within the prior's reach.
    model = EtaModel()
    for k in range(20):
        model.observe_job(_job(1.03 + 0.2 * (k + 0.5) / 20))
        model.observe_job(_done_at_first(1.03))
    model.observe_job(_probed(seen=8.8, last_eta=3.5, done_by=9.05))
    assert model.bounds()[0] >= 0.4


@pytest.mark.parametrize(
    ("low", "high", "margin"), [(0.73, 0.81, (0.0, 0.006)), (0.8, 1.25, (0.05, 0.15))]
)
def test_the_margin_below_the_low_end_grows_with_the_range_width(
    low: float, high: float, margin: tuple[float, float]
) -> None:
    # A narrow range (a steady bias, little noise): the first fetch lands near its top, and
    # every bit of margin below the lowest measurement sends that share of the jobs to a
    # second fetch. A wide one: a low end placed too high keeps results waiting.
    model = EtaModel()
    for k in range(8):
        model.observe_job(_job(low + (high - low) * (k + 0.5) / 8, early=True))
    lowest = low + (high - low) * 0.5 / 8
    lo, _ = model.bounds()
    assert margin[0] * lowest <= lowest - lo <= margin[1] * lowest


def _reported(job: FinishedJob, finish: float, *, lag: float = -0.002) -> FinishedJob:
    """``job`` (submitted at 0, finished at ``finish``) with the generation time the service
    reports for it: the finish, ``lag`` seconds off (the submission's answer left a little
    after the job started)."""
    return attrs.evolve(job, reported=finish - lag, generation_time=finish - lag)


def _seen_closely(rho: float, *, eta: float = 10.0) -> FinishedJob:
    """A job given ``eta`` at 0 that finished at ``rho * eta``, still running 0.03 s before
    and seen done 0.03 s after."""
    finish = rho * eta
    return FinishedJob(anchors=((0.0, eta),), after=finish - 0.03, by=finish + 0.03)


def _slow_start_then_done_at_first(
    model: EtaModel, *, waits: list[float] | None = None, reported: bool = True
) -> None:
    """A new client whose first jobs (measured) all happened to be slow, then 40 jobs spread
    evenly over 0.73-0.81 of their ETA: most found done at their first fetch, at 0.82, one in
    four seen closely. ``waits``: how long each job waited in a queue before it ran (the
    generation time leaves it out)."""
    rng = random.Random(3)
    jobs: list[tuple[FinishedJob, float]] = []
    for k in range(5):
        rho = 0.795 + 0.015 * k / 4
        jobs.append((_job(rho, early=True), 10 * rho))
    for k in range(40):
        rho = rng.uniform(0.73, 0.81)
        jobs.append((_seen_closely(rho) if k % 4 == 0 else _done_at_first(0.82), 10 * rho))
    for index, (job, finish) in enumerate(jobs):
        wait = waits[index] if waits else 0.0
        model.observe_job(_reported(job, finish - wait) if reported else job)


def test_the_generation_time_measures_the_jobs_a_first_fetch_found_done() -> None:
    # Without it, those jobs only say they were faster than 0.82 of their ETA, and the low
    # end stays where the first (slow) jobs put it: later results wait past their budget.
    model = EtaModel()
    _slow_start_then_done_at_first(model)
    lo, hi = model.bounds()
    assert 0.725 <= lo <= 0.74
    assert 0.80 <= hi <= 0.82
    assert model.low_samples >= 30  # every job measured: probes become rare


def test_a_generation_time_that_queue_waits_put_off_places_nothing() -> None:
    # Jobs that waited in a queue before they ran finished later than their generation time
    # says, each by its own wait: the bounds the jobs give on the lag disagree, and the
    # generation time is not used: the model is what it would be without it.
    rng = random.Random(4)
    waits = [rng.uniform(0.5, 2.0) for _ in range(45)]
    with_waits, without = EtaModel(), EtaModel()
    _slow_start_then_done_at_first(with_waits, waits=waits)
    _slow_start_then_done_at_first(without, reported=False)
    assert with_waits.bounds() == without.bounds()


async def test_the_poller_hands_the_generation_time_of_a_result_to_the_eta_model() -> None:
    # Through the planner, as the poller calls it: jobs found done at their first fetch,
    # each with its generation time, and one in four seen closely.
    planner = FetchPlanner(dba.PollPolicy(), lambda: None)
    rng = random.Random(5)
    for k in range(40):
        state = new_state(str(k))
        state.measured = True
        start = state.submitted_at
        rho = rng.uniform(0.73, 0.81)
        planner.observe_eta(state, 10.0, start)
        finish = start + 10 * rho
        seen = finish - 0.03 if k % 4 == 0 else start
        state.first_fetch = finish - 0.03 if k % 4 == 0 else start + 8.2
        state.last_processing = seen
        state.fetches = 2 if k % 4 == 0 else 1
        planner.learn(state, finish + 0.03 if k % 4 == 0 else start + 8.2, generation_time=10 * rho)
    lo, hi = planner.eta_model.bounds()
    assert 0.725 <= lo <= 0.74 and 0.80 <= hi <= 0.82


def test_with_many_measurements_the_low_end_keeps_what_a_sample_strays_below_it() -> None:
    # Sixty jobs measured closely (as the generation time measures every job), spread evenly
    # over 0.73-0.81 of their ETA. The 5% point of a sample of sixty strays from the jobs'
    # own by a few tenths of a percent: the low end stays that much below it, not at it.
    model = EtaModel()
    for k in range(60):
        model.observe_job(_job(0.73 + 0.08 * (k + 0.5) / 60))
    fifth = 0.73 + 0.08 * 2.5 / 60  # the third of sixty
    lo, _ = model.bounds()
    assert fifth - 0.006 <= lo <= fifth - 0.002
