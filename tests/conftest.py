from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from gansweep.config import DataConfig
from gansweep.data import DataRecord, Dataset, load_dataset

import servers

TINY = dict(epochs=1, batch_size=16, hidden=(32,), width=8, z_dim=8, n_samples=16, log_every=4, device="cpu")


@pytest.fixture(scope="session", autouse=True)
def feature_net_cache(tmp_path_factory):
    """Feature networks are trained once per test session into a temporary cache, never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("cache")
        patch.setenv("GANSWEEP_CACHE", str(path))
        yield path


def synthetic_dataset(n: int = 96, shape: tuple[int, int, int] = (1, 28, 28), n_classes: int = 10) -> Dataset:
    """Random images in [-1, 1]: enough to exercise the loop without reading any files."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand((n, *shape), generator=g) * 2 - 1
    labels = torch.arange(n) % n_classes
    record = DataRecord("synthetic", n, n, shape, n_classes, "0" * 16)
    return Dataset(images, labels, images.clone(), labels.clone(), record)


@pytest.fixture
def tiny_data() -> Dataset:
    return synthetic_dataset()


@pytest.fixture(scope="session")
def mnist5k() -> Dataset:
    return load_dataset(DataConfig(dataset="mnist-5k"), "cpu")


@pytest.fixture(scope="session")
def mnist5k_classifier(mnist5k, feature_net_cache):
    from gansweep.classifier import get_classifier

    return get_classifier(mnist5k, log=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.Postgres]:
    """One real PostgreSQL server for the session; skipped, saying why, where PostgreSQL or psycopg is missing."""
    try:
        tools = servers.find_postgres()
    except servers.Unavailable as e:
        pytest.skip(str(e))
    with servers.postgres_server(tools) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: servers.Postgres) -> str:
    """A new database per test on the session's server, so no test sees another's studies."""
    return postgres_server.new_database()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of one real MLflow tracking server for the session, serving its artifacts itself."""
    try:
        executable = servers.find_mlflow()
    except servers.Unavailable as e:
        pytest.skip(str(e))
    with servers.mlflow_server(executable, tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url
