"""The chaos suite: provider faults injected at `weir fake-llm`, observed through the whole mesh.

One table (`SCENARIOS`) is the single source of truth for `tests/chaos/test_chaos.py` and `weir chaos`.
A scenario is a list of steps; a step queues faults on fake-llm (POST /_fake/faults), sends one request (or
several identical ones at once) to the gateway's OpenAI endpoint, and checks:

- the HTTP status, and the error code of an error answer or of the SSE error event of a broken stream;
- `x-weir-model`: the model that actually answered;
- for streams, whether `data: [DONE]` ends them (it must not after a cut, stall, malformed or unfinished
  stream: those end with an error event instead);
- the requests fake-llm saw per model during the step (GET /_fake/stats): retries, fallbacks, skips;
- that the answer IS the answering model's (the fake answers deterministically: the runner asks it again,
  without faults, with the body it received) and that the usage reported is that model's real usage;
  a broken stream's text must be a prefix of that answer.

Models (config `CHAOS_CONFIG`, all on the fake provider): chaos-primary (weak, cheapest, 8k context),
chaos-fallback (weak, 8k) and chaos-large (strong, 128k), so the router's plan for chaos-primary is
primary -> fallback -> large and only chaos-large has a larger context window. `CHAOS_ENV` keeps timeouts,
backoff and the reasoner's circuit breaker (3 failures, 0.6 s cool-down) short. Before each scenario the
runner clears fake-llm and waits until every model answers for itself again (open breakers have closed).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

PRIMARY, FALLBACK, LARGE = "chaos-primary", "chaos-fallback", "chaos-large"
MODELS = (PRIMARY, FALLBACK, LARGE)
BREAKER_COOLDOWN_S = 0.6
FIRST_TOKEN_TIMEOUT_S = 0.5
TOTAL_TIMEOUT_S = 2.0

CHAOS_CONFIG = f"""# The chaos suite's model table (weir/chaos.py): three models on the simulated provider.
[[providers]]
name = "fake"
kind = "openai"
base_url = "${{WEIR_FAKE_LLM_URL:-http://127.0.0.1:8090/v1}}"
api_key_env = "WEIR_FAKE_LLM_KEY"
connect_timeout_s = 1.0
first_token_timeout_s = {FIRST_TOKEN_TIMEOUT_S}
total_timeout_s = {TOTAL_TIMEOUT_S}

[[models]]
id = "{PRIMARY}"
provider = "fake"
tier = "weak"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60
context_window = 8192

[[models]]
id = "{FALLBACK}"
provider = "fake"
tier = "weak"
input_usd_per_mtok = 0.30
output_usd_per_mtok = 1.20
context_window = 8192

[[models]]
id = "{LARGE}"
provider = "fake"
tier = "strong"
input_usd_per_mtok = 2.50
output_usd_per_mtok = 10.00
context_window = 128000
"""

PRICES = {PRIMARY: (0.15, 0.60), FALLBACK: (0.30, 1.20), LARGE: (2.50, 10.00)}  # USD per Mtok, as in CHAOS_CONFIG

CHAOS_ENV = {
    "WEIR_REASONER_MAX_RETRIES": "2",
    "WEIR_REASONER_BACKOFF_BASE_MS": "10",
    "WEIR_REASONER_BACKOFF_MAX_MS": "40",
    "WEIR_REASONER_RETRY_AFTER_CAP_S": "1",
    "WEIR_REASONER_BREAKER_FAILURES": "3",
    "WEIR_REASONER_BREAKER_COOLDOWN_S": str(BREAKER_COOLDOWN_S),
    "WEIR_REASONER_BREAKER_COOLDOWN_MAX_S": str(BREAKER_COOLDOWN_S * 4),
    "WEIR_LOG_LEVEL": "warning",
}


@dataclass(frozen=True)
class Fault:
    """A fault spec queued on fake-llm (see weir/fakellm/server.py) for `count` requests (-1: all) to `model`."""

    spec: str
    model: str = ""
    count: int = -1

    def __str__(self) -> str:
        n = "always" if self.count < 0 else f"x{self.count}"
        return f"{self.spec}@{(self.model or 'any').removeprefix('chaos-')} {n}"


@dataclass(frozen=True)
class Step:
    """One request (or `parallel` identical ones at once) and the outcome it must have."""

    stream: bool = False
    faults: tuple[Fault, ...] = ()
    wait_s: float = 0.0  # pause first (lets a circuit breaker's cool-down pass)
    temperature: float | None = None
    parallel: int = 1
    status: int = 200
    error: str = ""  # error code of a non-200 answer, or of the SSE error event of a broken stream
    model: str = ""  # x-weir-model, the model that answered
    done: bool = True  # streams: ends with data: [DONE]
    calls: Mapping[str, int] = field(default_factory=dict)  # requests fake-llm saw per model
    min_elapsed_s: float = 0.0  # e.g. a Retry-After that must have been waited for
    reasoning: bool = False  # reasoning deltas expected (passed through as reasoning_content)
    ledger: bool = False  # the gateway's ledger (GET /v1/usage/events) must have charged the answering model
    #                       (parallel requests that shared one call: charged once, the copies saved it)

    def describe(self) -> str:
        kind = "stream" if self.stream else "unary"
        if self.parallel > 1:
            kind = f"{self.parallel}x {kind}"
        faults = ", ".join(map(str, self.faults)) or "-"
        wait = f" after {self.wait_s:g}s" if self.wait_s else ""
        return f"{kind}{wait} [{faults}]"

    def expected(self) -> str:
        if self.status != 200:
            out = f"{self.status} {self.error}"
        else:
            out = f"200 {short(self.model)}"
            if self.stream:
                out += " [DONE]" if self.done else f" error:{self.error} no [DONE]"
        return out + " calls " + calls_text(self.calls)


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    steps: tuple[Step, ...]


def short(model: str) -> str:
    return model.removeprefix("chaos-")


def calls_text(calls: Mapping[str, int]) -> str:
    return "{" + ",".join(f"{short(m)}:{n}" for m, n in sorted(calls.items()) if n) + "}"


P, F, L = PRIMARY, FALLBACK, LARGE
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("429-retry-after", "429 with Retry-After: waited for, then the primary answers", (
        Step(faults=(Fault("429:0.4", P, 1),), model=P, calls={P: 2}, min_elapsed_s=0.4),
    )),
    Scenario("429-persistent", "persistent 429 without Retry-After: backoff retries, fallback, then the "
             "primary's open breaker is skipped", (
        Step(faults=(Fault("429", P),), model=F, calls={P: 3, F: 1}),
        Step(stream=True, model=F, calls={F: 1}),
    )),
    Scenario("500-once", "one 500: retried on the same model", (
        Step(stream=True, faults=(Fault("500", P, 1),), model=P, calls={P: 2}),
    )),
    Scenario("503-persistent", "persistent 503: fallback; the open breaker skips the primary", (
        Step(faults=(Fault("503", P),), model=F, calls={P: 3, F: 1}),
        Step(stream=True, model=F, calls={F: 1}),
    )),
    Scenario("reset-before-headers", "connection reset before headers: retried, persistent -> fallback", (
        Step(faults=(Fault("reset", P, 1),), model=P, calls={P: 2}),
        Step(stream=True, faults=(Fault("reset", P),), model=F, calls={P: 3, F: 1}),
    )),
    Scenario("no-response", "no response at all: total / first-token timeout, then the fallback (no retry)", (
        Step(faults=(Fault("hang", P),), model=F, calls={P: 1, F: 1}),
        Step(stream=True, model=F, calls={P: 1, F: 1}),
    )),
    Scenario("slow-first-token", "first token later than the timeout: fallback; slow but in time: kept", (
        Step(stream=True, faults=(Fault("slow_first_token:1500", P, 1),), model=F, calls={P: 1, F: 1}),
        Step(stream=True, faults=(Fault("slow_first_token:100", P, 1),), model=P, calls={P: 1}),
    )),
    Scenario("stream-cut", "stream cut after 6 events: an error event, never [DONE], no fallback", (
        Step(stream=True, faults=(Fault("cut:6", P, 1),), model=P, done=False, error="stream_interrupted",
             calls={P: 1}),
    )),
    Scenario("stream-stall", "stream stalls after 6 events: the stall timeout ends it with an error event", (
        Step(stream=True, faults=(Fault("stall:6", P, 1),), model=P, done=False, error="stream_interrupted",
             calls={P: 1}),
    )),
    Scenario("malformed-sse", "malformed SSE chunk mid-stream: error event; before any text: retried", (
        Step(stream=True, faults=(Fault("pace:10,malformed:6", P, 1),), model=P, done=False,
             error="stream_interrupted", calls={P: 1}),
        Step(stream=True, faults=(Fault("malformed:0", P, 1),), model=P, calls={P: 2}),
    )),
    Scenario("missing-done", "stream ends without [DONE]: not passed off as complete", (
        Step(stream=True, faults=(Fault("no_done", P, 1),), model=P, done=False, error="stream_interrupted",
             calls={P: 1}),
    )),
    Scenario("context-length", "context_length_exceeded: straight to the larger-context model, no retry", (
        Step(faults=(Fault("context_length", P),), model=L, calls={P: 1, L: 1}),
        Step(stream=True, model=L, calls={P: 1, L: 1}),
    )),
    Scenario("content-filter", "content-filter 400: refused at once, not retried, no fallback", (
        Step(faults=(Fault("content_filter", P),), status=400, error="content_filtered", calls={P: 1}),
        Step(stream=True, status=400, error="content_filtered", calls={P: 1}),
    )),
    Scenario("fallback-rejects-param", "primary down, fallback rejects `temperature`: skipped, the next "
             "target answers", (
        Step(temperature=0.7, faults=(Fault("503", P), Fault("reject_param:temperature", F)), model=L,
             calls={P: 3, F: 1, L: 1}),
    )),
    Scenario("flapping-primary", "primary alternates down/up: every request answered; the breaker opens, "
             "skips, probes after its cool-down and closes", (
        Step(faults=(Fault("503", P, 3),), model=F, calls={P: 3, F: 1}),
        Step(model=F, calls={F: 1}),
        Step(wait_s=BREAKER_COOLDOWN_S * 2, model=P, calls={P: 1}),
        Step(faults=(Fault("500", P, 1),), model=P, calls={P: 2}),
        Step(stream=True, faults=(Fault("503", P, 1),), model=P, calls={P: 2}),
        Step(stream=True, faults=(Fault("503", P, 3),), model=F, calls={P: 3, F: 1}),
        Step(stream=True, model=F, calls={F: 1}),
        Step(stream=True, wait_s=BREAKER_COOLDOWN_S * 2, model=P, calls={P: 1}),
    )),
    Scenario("accounting-after-failover", "after failover the answer, model and usage are the fallback's", (
        Step(stream=True, faults=(Fault("500", P),), model=F, calls={P: 3, F: 1}, ledger=True),
        Step(model=F, calls={F: 1}, ledger=True),
    )),
    Scenario("all-down", "every target 503: 503 upstream_unavailable; then every breaker is open: fail fast", (
        Step(faults=(Fault("503"),), status=503, error="upstream_unavailable", calls={P: 3, F: 3, L: 3}),
        Step(status=503, error="circuit_open", calls={}),
    )),
    Scenario("coalescing", "identical concurrent requests share one upstream call", (
        Step(parallel=4, temperature=0.0, faults=(Fault("slow_first_token:1200", P, 1),), model=P, calls={P: 1},
             ledger=True),
        Step(parallel=3, stream=True, temperature=0.0, faults=(Fault("pace:60", P, 1),), model=P, calls={P: 1},
             ledger=True),
    )),
    Scenario("reasoning-deltas", "reasoning deltas reach the client separately, as reasoning_content", (
        Step(stream=True, faults=(Fault("reasoning", P, 1),), model=P, reasoning=True, calls={P: 1}),
    )),
)


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Answer:
    """What one request got back."""

    status: int
    model: str = ""  # x-weir-model
    id: str = ""  # the completion's id
    content: str = ""
    reasoning: str = ""
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # the error body, or the SSE error event's
    done: bool = False  # data: [DONE] seen
    elapsed_s: float = 0.0


@dataclass
class StepResult:
    step: Step
    observed: str
    problems: list[str]
    notes: list[str] = field(default_factory=list)  # checks that could not be made (e.g. no ledger)


@dataclass
class ScenarioResult:
    scenario: Scenario
    steps: list[StepResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(not s.problems for s in self.steps)

    @property
    def problems(self) -> list[str]:
        return [f"step {i + 1}: {p}" for i, s in enumerate(self.steps) for p in s.problems]


class ChaosRunner:
    """Runs scenarios against a mesh: `gateway` is its HTTP root, `fake` fake-llm's (both without /v1)."""

    def __init__(self, gateway: str, fake: str, api_key: str) -> None:
        self.gateway = gateway.rstrip("/")
        self.fake = fake.rstrip("/")
        self.api_key = api_key
        self.nonce = secrets.token_hex(4)  # distinct prompts per run: nothing is ever answered from a cache
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ChaosRunner:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("use `async with ChaosRunner(...)`")
        return self._http

    async def run(self, scenarios: tuple[Scenario, ...] = SCENARIOS) -> list[ScenarioResult]:
        return [await self.run_scenario(s) for s in scenarios]

    async def run_scenario(self, scenario: Scenario) -> ScenarioResult:
        await self.settle()
        t0 = time.perf_counter()
        results = []
        for i, step in enumerate(scenario.steps):
            results.append(await self.run_step(f"{scenario.name} #{i + 1}", step))
        await self._fake("POST", "/_fake/reset")
        return ScenarioResult(scenario, results, time.perf_counter() - t0)

    # ---- fake-llm ----------------------------------------------------------------------------------

    async def _fake(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.fake + path, json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"fake-llm {method} {path}: HTTP {r.status}: {await r.text()}")
            return await r.json()

    async def calls(self) -> dict[str, int]:
        doc = await self._fake("GET", "/_fake/stats")
        return {m: int(n) for m, n in doc["by_model"].items()}

    async def settle(self) -> None:
        """Clears fake-llm and waits until every model answers for itself (no breaker left open)."""
        await self._fake("POST", "/_fake/reset")
        deadline = time.monotonic() + 10 * BREAKER_COOLDOWN_S + 10
        for model in MODELS:
            while True:
                a = await self.request(model, f"settle {model} {secrets.token_hex(4)}", stream=False)
                if a.status == 200 and a.model == model:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{model} does not recover: {a.status} {a.model} {a.error}")
                await asyncio.sleep(BREAKER_COOLDOWN_S / 3)
        await self._fake("POST", "/_fake/reset")

    # ---- gateway -----------------------------------------------------------------------------------

    async def request(self, model: str, text: str, *, stream: bool, temperature: float | None = None) -> Answer:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if temperature is not None:
            body["temperature"] = temperature
        headers = {"Authorization": f"Bearer {self.api_key}", "Cache-Control": "no-cache, no-store"}
        t0 = time.perf_counter()
        async with self.http.post(self.gateway + "/v1/chat/completions", json=body, headers=headers) as r:
            raw = await r.read()
            answer = Answer(status=r.status, model=r.headers.get("x-weir-model", ""))
            if r.status != 200:
                answer.error = _error(raw)
            elif stream:
                _read_sse(raw, answer)
            else:
                doc = orjson.loads(raw)
                answer.id = doc.get("id") or ""
                msg = doc["choices"][0]["message"]
                answer.content = msg.get("content") or ""
                answer.reasoning = msg.get("reasoning_content") or ""
                answer.usage = doc.get("usage")
        answer.elapsed_s = time.perf_counter() - t0
        return answer

    async def run_step(self, label: str, step: Step) -> StepResult:
        if step.wait_s:
            await asyncio.sleep(step.wait_s)
        if step.faults:
            await self._fake("POST", "/_fake/faults", {"faults": [
                {"fault": f.spec, "count": f.count, "model": f.model} for f in step.faults]})
        before = await self.calls()
        text = f"chaos {label} {self.nonce}: what does a weir do?"
        answers = await asyncio.gather(*(
            self.request(PRIMARY, text, stream=step.stream, temperature=step.temperature)
            for _ in range(step.parallel)))
        after = await self.calls()
        calls = {m: n - before.get(m, 0) for m, n in after.items() if n - before.get(m, 0)}
        problems: list[str] = []
        notes: list[str] = []
        if calls != dict(step.calls):
            problems.append(f"fake-llm calls {calls_text(calls)}, expected {calls_text(step.calls)}")
        for a in answers:
            problems += await self.check(step, a)
        if step.ledger and not problems:
            if step.parallel > 1:
                await self.check_ledger_shared(answers, problems, notes)
            else:
                await self.check_ledger(answers[0], problems, notes)
        return StepResult(step, _observed(answers[0], calls, step.stream), sorted(set(problems)), notes)

    async def _events(self, ids: set[str], notes: list[str]) -> dict[str, dict[str, Any]] | None:
        """The ledger events of these request ids (polled: the gateway settles in the background)."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        found: dict[str, dict[str, Any]] = {}
        for _ in range(50):
            async with self.http.get(self.gateway + "/v1/usage/events", params={"limit": "100"},
                                     headers=headers) as r:
                if r.status in (401, 403, 404):
                    notes.append(f"ledger not checked: GET /v1/usage/events answered {r.status}")
                    return None
                doc = await r.json()
            rows = doc.get("data", doc) if isinstance(doc, dict) else doc
            found = {e["id"]: e for e in rows if isinstance(e, dict) and e.get("id") in ids}
            if len(found) == len(ids):
                break
            await asyncio.sleep(0.05)
        return found

    async def check_ledger_shared(self, answers: list[Answer], problems: list[str], notes: list[str]) -> None:
        """Identical concurrent requests that shared one upstream call: the ledger charges that call once; the
        others cost nothing and record what they saved."""
        events = await self._events({a.id for a in answers}, notes)
        if events is None:
            return
        if len(events) != len(answers):
            problems.append(f"{len(answers) - len(events)} of {len(answers)} requests have no ledger event")
            return
        charged = [e for e in events.values() if float(e.get("cost_usd") or 0) > 0]
        if len(charged) != 1:
            problems.append(f"{len(charged)} of {len(answers)} coalesced requests were charged, expected 1")
            return
        cost = float(charged[0]["cost_usd"])
        for e in events.values():
            if e is not charged[0] and abs(float(e.get("saved_usd") or 0) - cost) > 1e-9 + cost * 1e-6:
                problems.append(f"a coalesced copy saved {e.get('saved_usd')} USD, expected {cost:.9f}")

    async def check_ledger(self, a: Answer, problems: list[str], notes: list[str]) -> None:
        """The gateway's ledger event of this request names the answering model, its usage and its price."""
        events = await self._events({a.id}, notes)
        if events is None:
            return
        event = events.get(a.id)
        if event is None:
            problems.append(f"no ledger event for request {a.id}")
            return
        usage = a.usage or {}
        price = PRICES[a.model]
        cost = (usage.get("prompt_tokens", 0) * price[0] + usage.get("completion_tokens", 0) * price[1]) / 1e6
        got = (event.get("model"), event.get("prompt_tokens"), event.get("completion_tokens"))
        want = (a.model, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        if got != want:
            problems.append(f"ledger charged (model, prompt, completion) {got}, expected {want}")
        if abs(float(event.get("cost_usd") or 0) - cost) > 1e-9 + cost * 1e-6:
            problems.append(f"ledger cost {event.get('cost_usd')} USD, expected {cost:.9f} at {a.model}'s prices")

    async def check(self, step: Step, a: Answer) -> list[str]:
        out: list[str] = []
        code = str((a.error or {}).get("code") or "")
        if a.status != step.status:
            out.append(f"HTTP {a.status} ({code or a.error}), expected {step.status}")
            return out
        if a.elapsed_s < step.min_elapsed_s:
            out.append(f"answered after {a.elapsed_s:.2f}s: the {step.min_elapsed_s:g}s Retry-After was not waited")
        if step.status != 200:
            if code != step.error:
                out.append(f"error code {code!r}, expected {step.error!r}")
            return out
        if a.model != step.model:
            out.append(f"x-weir-model {a.model!r}, expected {step.model!r}")
        if step.stream and a.done != step.done:
            out.append("[DONE] sent after a broken stream" if a.done else "no [DONE] after a complete stream")
        if step.stream and not step.done:
            if code != step.error:
                out.append(f"stream error event code {code!r}, expected {step.error!r}")
            if a.usage is not None:
                out.append("a broken stream reported usage as if complete")
        truth = await self.truth(step.model, reasoning=step.reasoning)
        if truth is None:
            out.append(f"fake-llm has no request body for {step.model}")
            return out
        content, reasoning, usage = truth
        if step.stream and not step.done:
            if not content.startswith(a.content) or not a.content.startswith(f"[{step.model}:"):
                out.append(f"partial text {a.content[:40]!r} is not the start of {step.model}'s answer")
            return out
        if a.content != content:
            out.append(f"content {a.content[:40]!r} is not {step.model}'s answer {content[:40]!r}")
        if a.reasoning != reasoning:
            out.append(f"reasoning {a.reasoning[:30]!r}, expected {reasoning[:30]!r}")
        if step.reasoning and not a.reasoning:
            out.append("no reasoning deltas")
        got = {k: (a.usage or {}).get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        want = {k: usage.get(k) for k in got}
        if got != want:
            out.append(f"usage {got}, expected {step.model}'s real usage {want}")
        return out

    async def truth(self, model: str, *, reasoning: bool) -> tuple[str, str, dict[str, Any]] | None:
        """The answer and usage fake-llm gives `model` for the body it last received for it (no faults)."""
        stats = await self._fake("GET", "/_fake/stats")
        body = stats["last_body_by_model"].get(model)
        if body is None:
            return None
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        headers = {"x-fake-fault": "reasoning" if reasoning else "pace:0"}
        async with self.http.post(self.fake + "/v1/chat/completions", json=body, headers=headers) as r:
            doc = await r.json()
        msg = doc["choices"][0]["message"]
        return msg.get("content") or "", msg.get("reasoning_content") or "", doc["usage"]


def _error(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"message": raw[:200].decode(errors="replace")}
    err = doc.get("error") if isinstance(doc, dict) else None
    return err if isinstance(err, dict) else {"message": str(doc)[:200]}


def _read_sse(raw: bytes, a: Answer) -> None:
    for line in raw.decode().splitlines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            a.done = True
            continue
        doc = orjson.loads(data)
        a.id = a.id or doc.get("id") or ""
        if "error" in doc:
            a.error = doc["error"]
            continue
        if doc.get("usage"):
            a.usage = doc["usage"]
        for choice in doc.get("choices") or ():
            delta = choice.get("delta") or {}
            a.content += delta.get("content") or ""
            a.reasoning += delta.get("reasoning_content") or ""


def _observed(a: Answer, calls: Mapping[str, int], stream: bool) -> str:
    if a.status != 200:
        out = f"{a.status} {(a.error or {}).get('code') or ''}"
    else:
        out = f"200 {short(a.model)}"
        if stream:
            out += " [DONE]" if a.done else f" error:{(a.error or {}).get('code')} no [DONE]"
    return out + " calls " + calls_text(calls)


def format_table(results: list[ScenarioResult]) -> str:
    """A plain-text pass/fail table: one line per step, the problems of failed steps under it."""
    rows = [("scenario", "step", "request [faults]", "expected", "observed", "result")]
    notes: dict[int, list[str]] = {}
    for r in results:
        for i, s in enumerate(r.steps):
            rows.append((r.scenario.name if i == 0 else "", str(i + 1), s.step.describe(), s.step.expected(),
                         s.observed, "FAIL" if s.problems else "pass"))
            if s.problems or s.notes:
                notes[len(rows) - 1] = [f"! {p}" for p in s.problems] + [f"- {n}" for n in s.notes]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
        lines.extend(f"    {p}" for p in notes.get(n, ()))
    passed = sum(r.ok for r in results)
    steps = sum(len(r.steps) for r in results)
    seconds = sum(r.seconds for r in results)
    lines.append(f"{passed}/{len(results)} scenarios passed ({steps} steps, {seconds:.1f}s)")
    return "\n".join(lines)
