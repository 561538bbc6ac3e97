import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_kernel_cache(tmp_path_factory):
    """Generated modules go to a temporary cache, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BACKPROP_CACHE", str(tmp_path_factory.mktemp("kernel-cache")))
    yield
    mp.undo()
