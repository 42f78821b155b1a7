"""The embedder's paraphrase judge (ScorePairs) as a real process: scores, symmetry, errors, model info."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.conftest import StartService
from tests.embedder.conftest import Connect
from weir.embedder.v1 import embedder_service_pb2 as pb
from weir.kit import supervisor
from weir.kit.config import default_judge_dir
from weir.kit.errors import parse_rpc_error
from weir.model import judge_train
from weir.model.manifest import read_manifest, sha256_file

PARAPHRASES = [
    ("How do I unclog a bathroom sink?", "whats the best way to clear a blocked bathroom basin"),
    ("What is the boiling point of water?", "at what temperature does water boil"),
    ("How can I make my laptop battery last longer?", "tips to extend notebook battery life"),
    # A near repeat: the adapter trained without generated near repeats scored this one 0.013.
    ("What is the capital of Kenya?", "what is the capital of Kenya"),
    ("What is the capital of Norway?", "Which city is the capital of Norway?"),
]
TRAPS = [
    ("How do I convert a PDF to Word?", "How do I convert a Word document to PDF?"),
    ("Cancel my order 48213", "Cancel my order 48231"),
    ("Is it safe to take ibuprofen with alcohol?", "Is it safe to take ibuprofen without food?"),
    ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
]


def pairs(items: list[tuple[str, str]]) -> list[pb.TextPair]:
    return [pb.TextPair(a=a, b=b) for a, b in items]


async def test_paraphrases_score_high_and_traps_low(connect: Connect) -> None:
    stub = await connect()
    resp = await stub.ScorePairs(pb.ScorePairsRequest(pairs=pairs(PARAPHRASES + TRAPS)))
    assert len(resp.scores) == len(PARAPHRASES) + len(TRAPS)
    paraphrases, traps = resp.scores[:len(PARAPHRASES)], resp.scores[len(PARAPHRASES):]
    # Every paraphrase above every trap; most paraphrases at the score that overrules a rule (0.99), the traps
    # far below it. (The adapter trained with blind11 and blind12 scores "Which city is the capital of Norway?"
    # 0.50, the one before 0.96: a near repeat the rules accept, which the cache then serves unless the judge
    # scores it below its veto, 0.05.)
    assert min(paraphrases) > max(traps), list(resp.scores)
    assert sum(p >= 0.99 for p in paraphrases) >= 3, list(resp.scores)
    assert max(traps) < 0.5, list(resp.scores)
    assert resp.judge_id == read_manifest(default_judge_dir()).model_id
    # One score per pair whichever side comes first (the lower of the two readings), alone or batched.
    swapped = await stub.ScorePairs(pb.ScorePairsRequest(pairs=pairs([(b, a) for a, b in PARAPHRASES + TRAPS])))
    assert list(swapped.scores) == pytest.approx(list(resp.scores), abs=1e-5)
    alone = await stub.ScorePairs(pb.ScorePairsRequest(pairs=pairs(TRAPS[:1])))
    assert alone.scores[0] == pytest.approx(resp.scores[len(PARAPHRASES)], abs=1e-5)
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.judge_id == resp.judge_id
    # One reading (b first) per pair on request: the two single readings of a pair make its default score.
    b_first = await stub.ScorePairs(pb.ScorePairsRequest(pairs=pairs(PARAPHRASES + TRAPS),
                                                         reading=pb.PAIR_READING_B_FIRST))
    a_first = await stub.ScorePairs(pb.ScorePairsRequest(pairs=pairs([(b, a) for a, b in PARAPHRASES + TRAPS]),
                                                         reading=pb.PAIR_READING_B_FIRST))
    lower = [min(x, y) for x, y in zip(b_first.scores, a_first.scores, strict=True)]
    assert lower == pytest.approx(list(resp.scores), abs=1e-5)
    assert list(b_first.scores) != pytest.approx(list(a_first.scores), abs=1e-5)  # the judge is not symmetric


async def test_bad_pairs_get_invalid_argument_with_the_field(connect: Connect) -> None:
    stub = await connect(max_pairs="2")
    cases = [
        (pb.ScorePairsRequest(), "EMPTY_BATCH", "pairs"),
        (pb.ScorePairsRequest(pairs=pairs([("a b", "c d")] * 3)), "TOO_MANY_PAIRS", "pairs"),
        (pb.ScorePairsRequest(pairs=[pb.TextPair(a="fine", b="  ")]), "INVALID_TEXTS", "pairs[0].b"),
    ]
    for request, reason, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ScorePairs(request)
        err = parse_rpc_error(info.value)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == reason
        assert field in [f for f, _ in err.field_violations]


async def test_without_the_judge_score_pairs_says_so(connect: Connect) -> None:
    stub = await connect(judge="false")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ScorePairs(pb.ScorePairsRequest(pairs=pairs(PARAPHRASES[:1])))
    err = parse_rpc_error(info.value)
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "JUDGE_NOT_LOADED"
    assert (await stub.GetModelInfo(pb.GetModelInfoRequest())).judge_id == ""
    assert len((await stub.Embed(pb.EmbedRequest(text="still embeds"))).embedding.vector) == 384 * 4


def test_a_missing_judge_fails_start_up_naming_make_model(start_service: StartService, model_dir: Path,
                                                         tmp_path: Path) -> None:
    with pytest.raises(supervisor.StartError) as info:
        start_service("embedder", {"WEIR_EMBEDDER_MODEL_DIR": str(model_dir), "WEIR_EMBEDDER_PORT": "0",
                                   "WEIR_EMBEDDER_JUDGE_DIR": str(tmp_path / "nowhere")})
    assert "paraphrase judge" in str(info.value) and "make model" in str(info.value)
    # The embedding model's directory is not a judge.
    with pytest.raises(supervisor.StartError) as info:
        start_service("embedder", {"WEIR_EMBEDDER_MODEL_DIR": str(model_dir), "WEIR_EMBEDDER_PORT": "0",
                                   "WEIR_EMBEDDER_JUDGE_DIR": str(model_dir)})
    assert "holds a 'embedding' model, not a 'pair-judge' one" in str(info.value)


def test_the_committed_adapter_was_trained_on_the_committed_pairs() -> None:
    # Reproducible from the data: `make judge` after a change to services/cache/eval/pairs.jsonl.
    meta, state = judge_train.read_adapter()
    rows = [r for r in judge_train.load_pairs() if r["split"] in meta["splits"]]
    assert meta["data_sha256"] == judge_train.data_digest(rows), "pairs changed since the adapter was trained"
    assert meta["pairs"] == len(rows)
    # The splits kept for the honest measure were never trained on (a new held-out split may be added later).
    assert not set(meta["splits"]) & {*meta["held_out"], *judge_train.DEFAULT_HOLD_OUT}
    assert sum(v.size for v in state.values()) < 1_000_000  # an adapter, not a model
    assert read_manifest(default_judge_dir()).adapter == sha256_file(judge_train.ADAPTER)  # and it is exported


def test_other_questions_pair_a_query_with_another_question_of_its_domain() -> None:
    rows = [
        {"domain": "rowing", "stored": "What muscles does rowing work?", "query": "which muscles does rowing train"},
        {"domain": "rowing", "stored": "What is a split in rowing?", "query": "whats a split on the erg"},
        {"domain": "rowing", "stored": "What does the catch mean in rowing?", "query": "explain the catch"},
        {"domain": "rowing", "stored": "What muscles does rowing work?", "query": "what muscles does rowing work"},
        {"domain": "bread", "stored": "Why is my bread dense?", "query": "what makes a loaf heavy inside"},
    ]
    texts: dict[str, np.ndarray] = {}

    def embed(batch: Sequence[str]) -> np.ndarray:  # a fixed unit vector per text; no two texts alike
        rng = np.random.default_rng(len(texts))
        for t in batch:
            if t not in texts:
                v = rng.normal(size=8)
                texts[t] = v / np.linalg.norm(v)
        return np.stack([texts[t] for t in batch])

    pairs = judge_train.other_questions(rows, share=1.0, embed=embed)
    own = {(r["stored"], r["query"]) for r in rows}
    assert pairs and all(label == 0 for _, _, label in pairs)
    domain_of = {t: r["domain"] for r in rows for t in (r["stored"], r["query"])}
    for stored, query, _ in pairs:
        assert (stored, query) not in own and stored != query  # never the query's own stored question
        assert domain_of[stored] == domain_of[query]  # the same topic, another question
        assert stored in {r["stored"] for r in rows}
    # A question alone in its domain has no other to be paired with.
    assert all(domain_of[q] != "bread" for _, q, _ in pairs)
    # Nothing closer than the similarity cap is taken (it could be the same question written for another pair).
    assert judge_train.other_questions(rows, share=1.0, embed=embed, max_similarity=-1.0) == []
