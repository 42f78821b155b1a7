"""The engine in-process, its helpers, the model-dir checks and the export verifier."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from tokenizers import Tokenizer

from services.embedder.batcher import MicroBatcher
from services.embedder.engine import (
    CPU,
    CUDA,
    TENSORRT,
    Engine,
    EngineError,
    EngineOptions,
    cgroup_cpu_quota,
    plan_runs,
    provider_candidates,
    usable_cores,
)
from weir.kit.errors import WeirError
from weir.kit.lru import LruCache
from weir.model.export import CHECK_SENTENCES, cpu_session, verify
from weir.model.manifest import MODEL_FILE, TOKENIZER_FILE, ModelDirError, read_manifest
from weir.model.tokenization import TextEncoder
from weir.model.verify import MIN_COSINE, compare


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    return Engine(model_dir, EngineOptions(intra_op_threads=1))


def test_mixed_lengths_in_one_call_match_one_text_per_run(engine: Engine) -> None:
    texts = ["hi", "a somewhat longer sentence about nothing in particular", "word " * 300, "ok", "x y z"]
    together = engine.embed(texts)
    assert together.vectors.shape == (5, 384)
    assert together.truncated == [False, False, True, False, False]
    assert together.token_counts[2] == 256
    on_every_core = engine.embed(texts, solo=True)  # the session a lone run on an idle engine uses
    np.testing.assert_allclose(on_every_core.vectors, together.vectors, atol=2e-5)
    for i, text in enumerate(texts):
        alone = engine.embed([text])
        np.testing.assert_allclose(together.vectors[i], alone.vectors[0], atol=2e-5)
        assert together.token_counts[i] == alone.token_counts[0]


def test_encoder_pads_to_the_longest_text_only(model_dir: Path) -> None:
    encoder = TextEncoder(model_dir / TOKENIZER_FILE, 256)
    batch = encoder.encode(["one", "one two three four"])
    assert batch.input_ids.shape[1] == max(batch.token_counts) < 128
    assert batch.attention_mask.sum(axis=1).tolist() == batch.token_counts
    assert batch.truncated == [False, False]


def test_long_texts_are_tokenized_from_a_prefix_with_exactly_the_whole_texts_tokens(model_dir: Path) -> None:
    """The tokenizer reads a whole text before truncating it (0.6 s for 500 KB): a prefix that fills the window
    gives the same encoding; one that does not is encoded again whole, so nothing changes but the time."""
    encoder = TextEncoder(model_dir / TOKENIZER_FILE, 256)
    whole = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
    whole.no_padding()
    whole.enable_truncation(256)
    english = "How do I reset the password on my company laptop after three failed attempts? " * 2000
    texts = [english, "x" * 20000, "无服务器的缓存命中率怎么提高" * 1000, ("supercalifragilistic" * 5 + " ") * 400,
             "a,b;c" * 4000, "short question"]
    for text, enc in zip(texts, encoder.tokenize(texts), strict=True):
        full = whole.encode(text)
        assert enc.ids == full.ids and bool(enc.overflowing) == bool(full.overflowing), text[:40]
    for (a, b), enc in zip([(english, "reset password"), ("q?", english)],
                           encoder.tokenize_pairs([(english, "reset password"), ("q?", english)]), strict=True):
        full = whole.encode(a, b)
        assert enc.ids == full.ids and enc.type_ids == full.type_ids and bool(enc.overflowing)
    assert [e.ids for e in encoder.tokenize([english])] == [whole.encode(english).ids]


def test_plan_runs_separates_very_different_lengths() -> None:
    assert plan_runs([5, 6, 5, 250]) == [[0, 2, 1], [3]]
    assert plan_runs([10] * 64) == [list(range(64))]
    lengths = [3, 200, 17, 18, 90, 3, 4, 256, 40]
    runs = plan_runs(lengths)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    for run in runs:  # within a run, lengths are sorted ascending
        assert [lengths[i] for i in run] == sorted(lengths[i] for i in run)


def test_provider_choice() -> None:
    assert provider_candidates((), [CPU]) == [[CPU]]
    assert provider_candidates((), [CUDA, CPU]) == [[CUDA, CPU], [CPU]]
    assert provider_candidates((), [TENSORRT, CUDA, CPU]) == [[TENSORRT, CUDA, CPU], [CUDA, CPU], [CPU]]
    assert provider_candidates((CPU,), [CUDA, CPU]) == [[CPU]]
    with pytest.raises(EngineError, match="CUDAExecutionProvider"):
        provider_candidates((CUDA,), [CPU])


def test_lru_cache_evicts_the_least_recently_used() -> None:
    lru: LruCache[int] = LruCache(2)
    lru.put(b"a", 1)
    lru.put(b"b", 2)
    assert lru.get(b"a") == 1  # a is now most recent
    lru.put(b"c", 3)
    assert lru.get(b"b") is None
    assert (lru.get(b"a"), lru.get(b"c"), len(lru)) == (1, 3, 2)
    assert (lru.hits, lru.misses) == (3, 1)
    off: LruCache[int] = LruCache(0)
    off.put(b"a", 1)
    assert off.get(b"a") is None and len(off) == 0


def _linked_copy(model_dir: Path, dest: Path, **manifest_changes: object) -> Path:
    dest.mkdir()
    for name in (MODEL_FILE, TOKENIZER_FILE):
        (dest / name).symlink_to(model_dir / name)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest.update(manifest_changes)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_model_dir_checks(model_dir: Path, tmp_path: Path) -> None:
    manifest = read_manifest(model_dir)
    assert manifest.dim == 384 and manifest.max_seq_length == 256 and manifest.normalized
    assert manifest.min_cosine_vs_reference >= MIN_COSINE
    damaged = _linked_copy(model_dir, tmp_path / "damaged", checksum="0" * 64)
    with pytest.raises(ModelDirError, match="damaged"):
        read_manifest(damaged)
    with pytest.raises(EngineError, match="make model"):
        Engine(damaged)
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    with pytest.raises(ModelDirError, match=r"no manifest\.json"):
        read_manifest(incomplete)


def test_a_model_with_a_shorter_max_seq_length_truncates_there(model_dir: Path, tmp_path: Path) -> None:
    short = Engine(_linked_copy(model_dir, tmp_path / "short", max_seq_length=16), EngineOptions(intra_op_threads=1))
    out = short.embed(["one two three", "word " * 40])
    assert out.truncated == [False, True]
    assert out.token_counts[1] == 16


# ------------------------------------------------------------------------------------- export verifier
def _unit(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def test_compare_accepts_tiny_noise_and_refuses_drift() -> None:
    rng = np.random.default_rng(7)
    texts = [f"text {i}" for i in range(30)]
    reference = _unit(rng.normal(size=(30, 384)))
    close = reference + rng.normal(scale=1e-4, size=reference.shape)
    ok = compare(texts, reference, close)
    assert ok.passed and ok.min_cosine > 0.9999

    drifted = close.copy()
    drifted[11] = _unit(reference[11:12] + rng.normal(scale=0.02, size=(1, 384)))[0]  # cosine ~0.93
    bad = compare(texts, reference, drifted)
    assert not bad.passed
    assert bad.worst(1)[0][1] == "text 11"
    assert "text 11" in bad.describe()

    scaled = compare(texts, reference, 3.0 * reference)  # cosine ignores scale
    assert scaled.passed
    broken = reference.copy()
    broken[0, 0] = np.nan
    assert not compare(texts, reference, broken).passed
    with pytest.raises(ValueError, match="shape"):
        compare(texts, reference, reference[:5])


def test_verify_refuses_the_exported_model_against_a_drifted_reference(model_dir: Path) -> None:
    encoder = TextEncoder(model_dir / TOKENIZER_FILE, 256)
    assert encoder.encode([CHECK_SENTENCES[-1]]).truncated == [True], "check set must exercise truncation"
    session = cpu_session(model_dir / MODEL_FILE, threads=1)
    exact = session.run(None, encoder.encode(list(CHECK_SENTENCES)).inputs(
        [i.name for i in session.get_inputs()]))[0]
    assert verify(session, encoder, exact).passed
    rng = np.random.default_rng(3)
    drifted = _unit(exact + rng.normal(scale=0.01, size=exact.shape))  # like int8 quantisation: ~0.98
    result = verify(session, encoder, drifted)
    assert not result.passed
    assert result.min_cosine < MIN_COSINE


# ------------------------------------------------------------------------------------- micro-batcher
async def test_batcher_runs_lone_requests_alone_and_gathers_concurrent_ones(engine: Engine) -> None:
    batcher = MicroBatcher(engine.embed, max_batch=4, max_wait_s=0.005, workers=2)
    batcher.start()
    try:
        for text in ("first", "second", "third"):
            await batcher.submit([text])[0]
        assert (batcher.runs, batcher.texts_embedded) == (3, 3)
        texts = [f"text number {i}" for i in range(20)]
        futures = [f for t in texts for f in batcher.submit([t])]
        results = await asyncio.gather(*futures)
        assert batcher.texts_embedded == 23
        assert 3 + 5 <= batcher.runs < 3 + 20  # batches formed, none larger than max_batch
        expected = engine.embed(texts).vectors
        for row, item in zip(expected, results, strict=True):
            np.testing.assert_allclose(np.frombuffer(item.vector, dtype="<f4"), row, atol=2e-5)
    finally:
        await batcher.close()
    with pytest.raises(WeirError) as info:
        batcher.submit(["too late"])
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_closing_the_batcher_fails_queued_texts_as_unavailable(engine: Engine) -> None:
    batcher = MicroBatcher(engine.embed, max_batch=1, max_wait_s=0, workers=1)
    batcher.start()
    futures = batcher.submit([f"queued {i}" for i in range(50)])
    await asyncio.sleep(0)
    await batcher.close()
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, WeirError)]
    assert failed, "texts still queued at close must fail"
    assert all(o.code == grpc.StatusCode.UNAVAILABLE for o in failed)
    assert len(failed) + batcher.texts_embedded == 50


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(("files", "quota"), [
    ({"cpu.max": "max 100000\n"}, None),  # cgroup v2, no limit
    ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2, a 1.5-CPU limit
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
    ({"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1
    ({"cpu.max": "garbage"}, None),
    ({}, None),  # no cgroup filesystem
])
def test_the_cgroup_cpu_quota_is_read_from_v2_and_v1_files(tmp_path: Path, files: dict[str, str],
                                                            quota: float | None) -> None:
    assert cgroup_cpu_quota(_cgroup(tmp_path, files)) == quota


def test_usable_cores_are_capped_by_a_container_cpu_limit(tmp_path: Path) -> None:
    unlimited = usable_cores(_cgroup(tmp_path / "free", {"cpu.max": "max 100000"}))
    assert unlimited >= 1
    # A 0.5-CPU pod still gets one thread; a 1.5-CPU pod two (rounded up), never more than its affinity.
    assert usable_cores(_cgroup(tmp_path / "half", {"cpu.max": "50000 100000"})) == 1
    assert usable_cores(_cgroup(tmp_path / "one-and-a-half", {"cpu.max": "150000 100000"})) == min(2, unlimited)
    assert usable_cores(_cgroup(tmp_path / "huge", {"cpu.max": "6400000 100000"})) == unlimited
