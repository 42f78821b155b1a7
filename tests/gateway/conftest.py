from __future__ import annotations

from collections.abc import Iterator

import pytest

from weir.devmesh import Mesh, start_mesh
from weir.kit.redis_local import LocalRedis


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, redis_server: LocalRedis, model_dir: object) -> Iterator[Mesh]:
    """One mesh for the gateway tests (each test uses its own questions, so cache entries never collide)."""
    m = start_mesh(tmp_path_factory.mktemp("mesh"), redis_server.url)
    yield m
    m.stop()
