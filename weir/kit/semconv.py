"""The span attributes Weir sets: OpenTelemetry's GenAI semantic conventions plus Weir's own `weir.*` names.

docs/telemetry.md documents this schema; tests/integration/test_tracing.py checks it on a real trace.
Keep every attribute name here, so the schema lives in one place.
"""

from __future__ import annotations

# --- OpenTelemetry GenAI semantic conventions (gen_ai.*) ---------------------------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"  # "chat" | "embeddings"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"  # "openai" | "anthropic" (the API's family)
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"  # model the caller asked for (gateway) / sent upstream (reasoner)
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"  # model that actually answered
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
SERVER_ADDRESS = "server.address"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"

# --- Weir ----------------------------------------------------------------------------------------------------
WEIR_TENANT = "weir.tenant"  # the team (never the key)
WEIR_KEY_ID = "weir.key.id"  # public key id (hash prefix), never the key itself
WEIR_CACHE_TIER = "weir.cache.tier"  # "miss" | "exact" | "semantic"
WEIR_CACHE_REASON = "weir.cache.reason"  # why the cache did (not) answer
WEIR_CACHE_SIMILARITY = "weir.cache.similarity"  # similarity of the served / best refused candidate
WEIR_CACHE_VERDICT = "weir.cache.verdict"  # "accepted" or the verifier check that refused
WEIR_CACHE_JUDGE = "weir.cache.judge"  # the paraphrase judge that scored the candidates, or why none did
WEIR_CACHE_JUDGE_SCORE = "weir.cache.judge.score"  # the judge's score of the best candidate it read
WEIR_CACHE_CANDIDATES = "weir.cache.candidates"  # candidates considered
WEIR_ROUTE_MODEL = "weir.route.model"  # primary target chosen
WEIR_ROUTE_REASON = "weir.route.reason"
WEIR_ROUTE_TIER = "weir.route.tier"
WEIR_ROUTE_STRONG_PROBABILITY = "weir.route.strong_probability"
WEIR_ROUTE_PLAN = "weir.route.plan"  # ordered model ids
WEIR_ATTEMPT = "weir.reasoner.attempt"  # 1-based attempt number within the request
WEIR_ATTEMPT_OUTCOME = "weir.reasoner.outcome"  # "ok" or the failure class
WEIR_STREAM = "weir.stream"  # whether the answer was streamed
WEIR_COALESCED = "weir.reasoner.coalesced"  # the answer was shared with an identical in-flight request
WEIR_EMBED_CACHED = "weir.embedder.cached"
WEIR_EMBED_TRUNCATED = "weir.embedder.truncated"
WEIR_EMBED_TOKENS = "weir.embedder.tokens"
