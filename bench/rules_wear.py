"""Rules on realistic signals: how early the forecast warns, and how much noise the alarm handling removes.

Two scenarios, both replayed through the real, pure rule code (``agent.rules.evaluate`` and the
flood gate) at 1 s resolution in simulated time, so an 8-hour tool life takes seconds:

1. **Wear curve.** A tool wears in three phases: run-in (fast at first, slowing down), steady wear
   (linear), then a steep end of life (accelerating). Readings carry Gaussian measurement noise. A
   ``forecast`` rule (limit 95 %, horizon 30 min, window 10 min) and, for comparison, a
   ``threshold`` rule with a warning at 80 % watch it. Per tool: minutes before the (noise-free)
   wear reaches 95 % that each warned, the forecast's own estimate at that moment (for the forecast
   still active at the limit), and false forecasts (raised and cleared again before the end of
   life, e.g. extrapolating the fast run-in with a long horizon).
2. **Noise at a limit.** One hour of a signal sitting at a threshold rule's warning limit (80 %)
   with Gaussian noise. Events produced without any handling, with a deadband, with the chattering
   rule, with both, and after the flood gate (default ``[alerts]``).

Usage::

    .venv/bin/python bench/rules_wear.py                 # 20 tools, noise 0.3 %; noise 0.5 % at the limit
    .venv/bin/python bench/rules_wear.py --tools 50 --wear-noise 0.5 --limit-noise 1.0 --seed 7
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import AlertsSection, ForecastRule, ThresholdRule
from agent.model import Quality, Sample, TransitionKind
from agent.rules import RuleState, evaluate
from agent.rules.flood import FloodState, admit, flood_tick

T0 = 1_700_000_000.0


@dataclass
class Tool:
    """A wear curve in % over seconds: run-in, steady wear, steep end of life."""

    run_in: float  # % reached by the end of run-in
    run_in_s: float
    steady_rate: float  # % per second during steady wear
    knee: float  # % at which the end of life starts
    end_tau: float  # e-folding time (s) of the end-of-life acceleration

    def wear(self, t: float) -> float:
        if t < self.run_in_s:  # 1 - exp decay: fast first, then slowing
            return self.run_in * (1 - math.exp(-4 * t / self.run_in_s)) / (1 - math.exp(-4))
        steady_end = self.run_in_s + (self.knee - self.run_in) / self.steady_rate
        if t < steady_end:
            return self.run_in + self.steady_rate * (t - self.run_in_s)
        # exponential growth of the wear rate from the steady rate on
        dt = t - steady_end
        return self.knee + self.steady_rate * self.end_tau * (math.exp(dt / self.end_tau) - 1)

    def reaches(self, level: float) -> float:
        lo, hi = 0.0, 1.0
        while self.wear(hi) < level:
            hi *= 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.wear(mid) < level else (lo, mid)
        return hi


def random_tool(rng: random.Random) -> Tool:
    hours = rng.uniform(4, 10)  # steady wear from about 10 % to 75 % takes this long
    return Tool(
        run_in=rng.uniform(8, 12),
        run_in_s=rng.uniform(15, 30) * 60,
        steady_rate=65 / (hours * 3600),
        knee=rng.uniform(70, 80),
        end_tau=rng.uniform(10, 25) * 60,
    )


def rule(model: Any, **doc: Any) -> Any:
    return model.model_validate({"id": doc["kind"], "machine": "press-1", "signal": "tool1_wear", **doc})


def sample(value: float, t: float) -> Sample:
    return Sample("press-1", "tool1_wear", value, Quality.GOOD, T0 + t)


def wear_scenario(rng: random.Random, noise: float, window: str, horizon: str) -> dict[str, Any]:
    tool = random_tool(rng)
    limit_at = tool.reaches(95.0)
    forecast = rule(ForecastRule, kind="forecast", limit=95, horizon=horizon, window=window, name="tool 1")
    warning = rule(ThresholdRule, kind="threshold", warning=80, deadband=1)
    fs, ws = RuleState(), RuleState()
    last: Any = None  # the raise still active when the wear reaches the limit
    threshold_at: float | None = None
    raises = clears = 0
    t = 0.0
    while t <= limit_at:
        v = tool.wear(t) + rng.gauss(0, noise)
        fs, ts = evaluate(forecast, fs, sample(v, t), t, "%")
        for x in ts:
            if x.kind is TransitionKind.RAISED:
                raises += 1
                last = (t, x)
            elif x.kind is TransitionKind.CLEARED:
                clears += 1
                last = None
        ws, ts = evaluate(warning, ws, sample(v, t), t, "%")
        if threshold_at is None and any(x.kind is TransitionKind.RAISED for x in ts):
            threshold_at = t
        t += 1.0
    out: dict[str, Any] = {"life_h": limit_at / 3600, "raises": raises, "false": clears}
    if last is not None:
        at, x = last
        out["forecast_min"] = (limit_at - at) / 60
        out["estimate_min"] = x.extra["seconds_to_limit"] / 60
        out["message"] = x.message
    if threshold_at is not None:
        out["threshold_min"] = (limit_at - threshold_at) / 60
    return out


def noise_scenario(rng: random.Random, noise: float, seconds: int) -> dict[str, int]:
    values = [80.0 + rng.gauss(0, noise) for _ in range(seconds)]
    variants: dict[str, dict[str, Any]] = {
        "no handling": {"chatter_count": 0},
        "deadband 1": {"chatter_count": 0, "deadband": 1},
        "chattering (3 in 1 min)": {},
        "deadband 1 + chattering": {"deadband": 1},
        "deadband 1 + chattering + off_delay 10s": {"deadband": 1, "off_delay": "10s"},
    }
    out: dict[str, int] = {}
    flood = AlertsSection()
    for name, extra in variants.items():
        r = rule(ThresholdRule, kind="threshold", warning=80, **extra)
        state, gate = RuleState(), FloodState()
        produced = sent = 0
        upstream: dict[str, Any] = {}
        for i, v in enumerate(values):
            state, ts = evaluate(r, state, sample(v, i), float(i), "%")
            produced += len(ts)
            gate, passed = admit(flood, "press-1", gate, ts, float(i))
            gate, more = flood_tick(flood, "press-1", gate, float(i), T0 + i, upstream)
            for x in passed + more:
                sent += 1
                if x.kind is TransitionKind.CLEARED:
                    upstream.pop(x.key, None)
                else:
                    upstream[x.key] = x.severity
        out[name] = produced
        out[name + " / after flood gate"] = sent
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tools", type=int, default=20, help="tool lives to replay (default 20)")
    p.add_argument("--wear-noise", type=float, default=0.3, help="sigma of the wear reading's noise, %% (0.3)")
    p.add_argument("--limit-noise", type=float, default=0.5, help="sigma of the noise at the limit, %% (0.5)")
    p.add_argument("--noise-minutes", type=int, default=60, help="length of the noise scenario (60)")
    p.add_argument("--window", default="10m", help="the forecast's window (10m)")
    p.add_argument("--horizon", default="30m", help="the forecast's horizon (30m)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()

    rows = [wear_scenario(rng, args.wear_noise, args.window, args.horizon) for _ in range(args.tools)]
    print(f"Wear curves: {args.tools} tools, 1 s resolution, noise sigma {args.wear_noise} %")
    print(f"forecast: limit 95 %, horizon {args.horizon}, window {args.window}; threshold: warning 80 %, deadband 1")
    print(f"{'tool':>4} {'life h':>7} {'forecast min':>13} {'its estimate':>13} {'threshold min':>14} {'false':>6}")
    for i, r in enumerate(rows, 1):
        f = f"{r['forecast_min']:.1f}" if "forecast_min" in r else "-"
        e = f"{r['estimate_min']:.1f}" if "estimate_min" in r else "-"
        th = f"{r['threshold_min']:.1f}" if "threshold_min" in r else "-"
        print(f"{i:>4} {r['life_h']:>7.1f} {f:>13} {e:>13} {th:>14} {r['false']:>6}")
    warned = [r["forecast_min"] for r in rows if "forecast_min" in r]
    ths = [r["threshold_min"] for r in rows if "threshold_min" in r]
    if warned:
        print(
            f"forecast warned {len(warned)}/{len(rows)} tools: minutes before 95 %: min {min(warned):.1f}, "
            f"median {statistics.median(warned):.1f}, max {max(warned):.1f}"
        )
    if ths:
        print(f"threshold at 80 % warned: median {statistics.median(ths):.1f} min before 95 %")
    print(f"false forecasts (raised, then cleared before the end of life): {sum(r['false'] for r in rows)}")
    example = next((r["message"] for r in rows if "message" in r), None)
    if example:
        print(f"example message: {example}")

    print()
    print(f"Noise at the limit: {args.noise_minutes} min at 80 % (the warning limit), noise sigma {args.limit_noise} %")
    counts = noise_scenario(rng, args.limit_noise, args.noise_minutes * 60)
    print(f"{'handling':<42} {'events':>7} {'after flood gate':>17}")
    for name in [k for k in counts if not k.endswith("flood gate")]:
        print(f"{name:<42} {counts[name]:>7} {counts[name + ' / after flood gate']:>17}")
    print(f"\n({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
