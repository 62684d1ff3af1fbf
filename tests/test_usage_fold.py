"""The usage fold is pure: tables of observations in, summaries and tool changes out, plus hypothesis
properties (storing and loading the state anywhere, or splitting the input anywhere, changes nothing)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import TransitionKind
from agent.pipeline.usage import (
    DAY,
    Changed,
    MachineUsage,
    Observation,
    Output,
    Params,
    Seen,
    Summary,
    ToolChanged,
    ToolEvent,
    Watch,
    fold,
    from_json,
    period_start,
    so_far,
    start,
    step,
    to_json,
)

R, U, C = TransitionKind.RAISED, TransitionKind.UPDATED, TransitionKind.CLEARED
T0 = 1_714_521_600.0  # 2024-05-01T00:00:00Z
H = 3600.0
P = Params(every=DAY, keep=90 * DAY)


def run(observations: list[Observation], params: Params = P) -> tuple[MachineUsage, list[Output]]:
    first = observations[0]
    assert isinstance(first, Watch)
    state = start("m1", params, first)
    return fold(params, state, observations[1:])


def summaries(outputs: list[Output]) -> list[dict[str, Any]]:
    return [o.data() for o in outputs if isinstance(o, Summary)]


def tools(outputs: list[Output]) -> list[dict[str, Any]]:
    return [o.data() for o in outputs if isinstance(o, ToolEvent)]


def test_periods_are_aligned_to_utc_midnight() -> None:
    assert period_start(T0 + 5 * H, DAY) == T0
    assert period_start(T0 - 1, DAY) == T0 - DAY
    assert period_start(T0 + 5 * H + 59, H) == T0 + 5 * H
    assert period_start(T0 + 9 * H, 8 * H) == T0 + 8 * H  # shifts 00-08, 08-16, 16-24 UTC


def test_a_quiet_day_watched_from_its_start() -> None:
    _, out = run([Watch(T0), Seen(T0 + DAY)])
    (day,) = summaries(out)
    assert day == {
        "machine": "m1",
        "period_start": "2024-05-01T00:00:00.000Z",
        "period_end": "2024-05-02T00:00:00.000Z",
        "online_seconds": DAY,
        "offline_seconds": 0.0,
        "unobserved_seconds": 0.0,
        "alerts": {},
        "codes": {},
        "tool_changes": {},
    }


def test_offline_time_is_the_offline_alerts_time_and_online_the_rest_of_the_watched_time() -> None:
    obs: list[Observation] = [
        Watch(T0 + 2 * H),  # the agent starts at 02:00: the first two hours are not watched
        Changed(T0 + 3 * H, "m1/offline", R),
        Changed(T0 + 4 * H, "m1/offline", C),
        Changed(T0 + 23 * H, "m1/offline", R),  # offline across midnight
        Seen(T0 + DAY + 1),
        Changed(T0 + DAY + 2 * H, "m1/offline", C),
        Seen(T0 + 2 * DAY),
    ]
    _, out = run(obs)
    day1, day2 = summaries(out)
    assert (day1["online_seconds"], day1["offline_seconds"], day1["unobserved_seconds"]) == (20 * H, 2 * H, 2 * H)
    assert day1["alerts"] == {"offline": {"raised": 2, "active_seconds": 2 * H}}
    assert (day2["online_seconds"], day2["offline_seconds"], day2["unobserved_seconds"]) == (22 * H, 2 * H, 0.0)
    assert day2["alerts"] == {"offline": {"raised": 0, "active_seconds": 2 * H}}  # raised the day before


def test_alerts_count_raises_and_active_time_per_rule() -> None:
    obs: list[Observation] = [
        Watch(T0),
        Changed(T0 + 1 * H, "m1/wear", R),
        Changed(T0 + 1.5 * H, "m1/wear", U),  # critical now: the same spell
        Changed(T0 + 2 * H, "m1/wear", C),
        Changed(T0 + 5 * H, "m1/wear", R),
        Changed(T0 + 5.5 * H, "m1/wear", C),
        Changed(T0 + 6 * H, "m1/alarms/Spindle.Hot", R, "Spindle.Hot", "Spindle too hot"),
        Changed(T0 + 6 * H, "m1/alarms/Door.Open", R, "Door.Open", "Door open"),
        Changed(T0 + 7 * H, "m1/alarms/Spindle.Hot", C),
        Changed(T0 + 8 * H, "m1/alarms/Door.Open", C),
        Seen(T0 + DAY),
    ]
    _, out = run(obs)
    (day,) = summaries(out)
    assert day["alerts"] == {
        "wear": {"raised": 2, "active_seconds": 1.5 * H},
        "alarms": {"raised": 2, "active_seconds": 3 * H},  # summed over the rule's alerts
    }
    assert day["codes"] == {
        "alarms/Spindle.Hot": {
            "rule": "alarms",
            "code": "Spindle.Hot",
            "count": 1,
            "active_seconds": H,
            "text": "Spindle too hot",
        },
        "alarms/Door.Open": {
            "rule": "alarms",
            "code": "Door.Open",
            "count": 1,
            "active_seconds": 2 * H,
            "text": "Door open",
        },
    }


def test_fault_codes_count_each_occurrence_and_a_new_code_while_active() -> None:
    obs: list[Observation] = [
        Watch(T0),
        Changed(T0 + 1 * H, "m1/fault-code", R, 12, "Spindle overload"),
        Changed(T0 + 1.25 * H, "m1/fault-code", U, 12, "Spindle overload"),  # a repeat: the same occurrence
        Changed(T0 + 1.5 * H, "m1/fault-code", U, 31, "Coolant low"),  # another code while active
        Changed(T0 + 2 * H, "m1/fault-code", C),
        Changed(T0 + 3 * H, "m1/fault-code", R, 12, "Spindle overload"),
        Changed(T0 + 3.1 * H, "m1/fault-code", C),
        Seen(T0 + DAY),
    ]
    _, out = run(obs)
    (day,) = summaries(out)
    assert day["codes"] == {
        "fault-code/12": {
            "rule": "fault-code",
            "code": 12,
            "count": 2,
            "active_seconds": round(0.5 * H + 0.1 * H, 3),
            "text": "Spindle overload",
        },
        "fault-code/31": {
            "rule": "fault-code",
            "code": 31,
            "count": 1,
            "active_seconds": 0.5 * H,
            "text": "Coolant low",
        },
    }
    assert day["alerts"] == {"fault-code": {"raised": 2, "active_seconds": round(H + 0.1 * H, 3)}}


def test_tool_changes_with_time_in_service_and_warning() -> None:
    tool = frozenset({"punch"})
    obs: list[Observation] = [
        Watch(T0, tools=tool),
        Changed(T0 + 4 * H, "m1/punch", R),  # the first warning
        Changed(T0 + 5 * H, "m1/punch", U),  # critical: not a first warning
        ToolChanged(T0 + 6 * H, "punch", "punch 3", 1000.0, 1000.0),
        Changed(T0 + 6 * H, "m1/punch", C),
        ToolChanged(T0 + 9 * H, "punch", "punch 3", 600.0, 1000.0),  # changed early, no warning
        ToolChanged(T0 + 10 * H, "punch", "punch 3", None, 1000.0),  # life not known
        Seen(T0 + DAY, tools=tool),
    ]
    _, out = run(obs)
    first, second, third = tools(out)
    assert first == {
        "machine": "m1",
        "rule": "punch",
        "tool": "punch 3",
        "life_used": 1000.0,
        "limit": 1000.0,
        "life_fraction": 1.0,
        "in_service_seconds": 6 * H,  # since first seen
        "warned_seconds": 2 * H,
    }
    assert (second["life_fraction"], second["in_service_seconds"], second["warned_seconds"]) == (0.6, 3 * H, None)
    assert (third["life_fraction"], third["in_service_seconds"]) == (None, H)
    (day,) = summaries(out)
    assert day["tool_changes"] == {
        "punch": {"tool": "punch 3", "count": 3, "mean_life_fraction": 0.8, "min_life_fraction": 0.6}
    }


def test_a_tool_change_of_a_rule_not_seen_before_has_no_time_in_service() -> None:
    _, out = run([Watch(T0), ToolChanged(T0 + H, "drill", "drill", 5.0, 10.0)])
    assert tools(out)[0]["in_service_seconds"] is None


def test_time_the_agent_was_down_is_not_watched_and_missed_periods_are_summarised() -> None:
    obs: list[Observation] = [
        Watch(T0),
        Changed(T0 + 20 * H, "m1/wear", R),
        Seen(T0 + 22 * H),  # the last sign of life: the agent dies after this
        Watch(T0 + 2 * DAY + 6 * H, active=frozenset({"m1/wear"})),  # back two days later, wear still active
        Changed(T0 + 2 * DAY + 7 * H, "m1/wear", C),
        Seen(T0 + 3 * DAY),
    ]
    _, out = run(obs)
    day1, day2, day3 = summaries(out)
    assert (day1["online_seconds"], day1["unobserved_seconds"]) == (22 * H, 2 * H)
    assert day1["alerts"]["wear"] == {"raised": 1, "active_seconds": 2 * H}  # 20:00 to the last sign of life
    assert (day2["online_seconds"], day2["unobserved_seconds"], day2["alerts"]) == (0.0, DAY, {})
    assert (day3["online_seconds"], day3["unobserved_seconds"]) == (18 * H, 6 * H)
    assert day3["alerts"]["wear"] == {"raised": 0, "active_seconds": H}


def test_alerts_cleared_while_the_agent_was_down_are_not_counted_on() -> None:
    obs: list[Observation] = [
        Watch(T0),
        Changed(T0 + H, "m1/wear", R),
        Seen(T0 + 2 * H),
        Watch(T0 + 3 * H, active=frozenset()),  # the alert log has it no more
        Seen(T0 + DAY),
    ]
    (day,) = summaries(run(obs)[1])
    assert day["alerts"] == {"wear": {"raised": 1, "active_seconds": H}}


def test_periods_older_than_keep_are_not_summarised() -> None:
    params = Params(every=DAY, keep=3 * DAY)
    obs: list[Observation] = [Watch(T0), Seen(T0 + H), Watch(T0 + 10 * DAY + H)]
    out = summaries(run(obs, params)[1])
    assert [s["period_start"][:10] for s in out] == ["2024-05-08", "2024-05-09", "2024-05-10"]


def test_times_never_go_back() -> None:
    obs: list[Observation] = [Watch(T0), Changed(T0 + 2 * H, "m1/wear", R), Changed(T0 + H, "m1/wear", C)]
    state, _ = run(obs)
    summary = so_far(state).data()
    assert summary["alerts"]["wear"] == {"raised": 1, "active_seconds": 0.0}
    assert summary["period_end"] == "2024-05-01T02:00:00.000Z"


def test_so_far_counts_the_period_under_way_up_to_the_last_observation() -> None:
    state, out = run([Watch(T0 + H), Changed(T0 + 2 * H, "m1/fault-code", R, 12, "x"), Seen(T0 + 5 * H)])
    assert out == []
    now = so_far(state).data()
    assert (now["period_start"], now["period_end"]) == ("2024-05-01T00:00:00.000Z", "2024-05-01T05:00:00.000Z")
    assert (now["online_seconds"], now["unobserved_seconds"]) == (4 * H, H)
    assert now["codes"]["fault-code/12"]["active_seconds"] == 3 * H
    assert so_far(state) == so_far(state)  # nothing changed


def test_tool_rules_are_registered_and_forgotten_by_seen() -> None:
    state, _ = run([Watch(T0, tools=frozenset({"a"})), Seen(T0 + H, tools=frozenset({"a", "b"}))])
    assert {k: v.since for k, v in state.tools.items()} == {"a": T0, "b": T0 + H}
    state, _ = step(P, state, Seen(T0 + 2 * H, tools=frozenset({"b"})))
    assert list(state.tools) == ["b"]


# -- properties ------------------------------------------------------------------------------------------

KEYS = ["m1/offline", "m1/wear", "m1/punch", "m1/code", "m1/alarms/A", "m1/alarms/B"]


@st.composite
def observations(draw: st.DrawFn) -> list[Observation]:
    """A random life of one machine over a few (short) periods: transitions, tool changes, restarts."""
    t = T0 + draw(st.floats(0, 100))
    out: list[Observation] = [Watch(t, tools=frozenset({"punch"}))]
    active: set[str] = set()
    for _ in range(draw(st.integers(0, 40))):
        t += draw(st.floats(0, 40, allow_nan=False))
        what = draw(st.sampled_from(["change", "change", "change", "seen", "tool", "watch"]))
        if what == "seen":
            out.append(Seen(t))
        elif what == "tool":
            used = draw(st.none() | st.floats(0, 1000))
            out.append(ToolChanged(t, "punch", "punch 3", used, 1000.0))
        elif what == "watch":
            t += draw(st.floats(0, 200))
            active = {k for k in active if draw(st.booleans())}
            out.append(Watch(t, frozenset(active), frozenset({"punch"})))
        else:
            key = draw(st.sampled_from(KEYS))
            kind = draw(st.sampled_from([R, U, C])) if key in active else R
            code = draw(st.sampled_from([None, 12, 31])) if key == "m1/code" and kind is not C else None
            out.append(Changed(t, key, kind, code, f"code {code}" if code else ""))
            active = (active | {key}) if kind is not C else (active - {key})
    return out


SHORT = Params(every=60.0, keep=600.0)


def _reloaded(state: MachineUsage) -> MachineUsage:
    return from_json(json.loads(json.dumps(to_json(state))))


@settings(max_examples=150, deadline=None)
@given(observations(), st.data())
def test_storing_and_loading_the_state_anywhere_changes_nothing(obs: list[Observation], data: st.DataObject) -> None:
    whole, expected = run(obs, SHORT)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(obs)))))
    state = start("m1", SHORT, obs[0])  # type: ignore[arg-type]
    outputs: list[Output] = []
    for a, b in zip([1, *cuts], [*cuts, len(obs)], strict=True):
        state = _reloaded(state)  # a restart of the agent that lost nothing in between
        state, out = fold(SHORT, state, obs[a:b])
        outputs += out
    assert outputs == expected
    assert state == whole
    assert so_far(state).data() == so_far(whole).data()


@settings(max_examples=150, deadline=None)
@given(observations(), st.integers(0, 50))
def test_splitting_the_input_anywhere_changes_nothing(obs: list[Observation], at: int) -> None:
    whole, expected = run(obs, SHORT)
    cut = min(max(1, at), len(obs))
    first, out1 = run(obs[:cut], SHORT)
    second, out2 = fold(SHORT, first, obs[cut:])
    assert out1 + out2 == expected
    assert second == whole


@settings(max_examples=150, deadline=None)
@given(observations())
def test_time_adds_up_in_every_period(obs: list[Observation]) -> None:
    state, out = run(obs, SHORT)
    for s in [o for o in out if isinstance(o, Summary)] + [so_far(state)]:
        d = s.data()
        total = d["online_seconds"] + d["offline_seconds"] + d["unobserved_seconds"]
        assert abs(total - (s.end - s.start)) < 0.01
        for rule, a in d["alerts"].items():
            assert 0 <= a["active_seconds"] <= (s.end - s.start) * (2 if rule == "alarms" else 1) + 0.01
        for c in d["codes"].values():
            assert c["count"] >= 0 and c["active_seconds"] >= 0
    starts = [o.start for o in out if isinstance(o, Summary)]
    assert starts == sorted(set(starts))  # every period once, in order
