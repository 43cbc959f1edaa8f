"""Fixtures shared across the test files: the tiny untrained models (built by
tests/support/models.py) and the one redis-server of the test session. Heavy imports happen in
the fixtures, so tests that use none of them (deployment, text) do not load torch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_lm() -> Any:
    """One tiny LM (eval mode, seed 0, 8 frames of context) for tests that only run it."""
    from tests.support.models import tiny_lm as build

    return build()


@pytest.fixture(scope="session")
def tiny_codec() -> Any:
    """One tiny float64 codec (eval mode, seed 0) for tests that only run it."""
    from tests.support.models import tiny_codec as build

    return build()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One redis-server for the whole test session (each test uses its own key prefix)."""
    from services.session.redis_server import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def lm_eval_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Checkpoints of the LM evaluation's tiny codec (8 and 4 codebooks) and LM."""
    from tests.support.lm_eval import save_models

    return save_models(tmp_path_factory.mktemp("lm_eval_models"))


@pytest.fixture(scope="session")
def lm_eval_shards(tmp_path_factory: pytest.TempPathFactory, lm_eval_models: dict[str, Any]) -> Any:
    """Dialogue shards (train, test, reference) in the tiny codec's codes."""
    from tests.support.lm_eval import write_shards

    return write_shards(tmp_path_factory.mktemp("lm_eval_shards"), lm_eval_models["codec"])
