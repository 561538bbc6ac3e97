import os

import pytest
from hypothesis import settings

# CI runs the property tests on the same examples every time (a failure there is
# reproducible, and a green run is not luck of the draw); locally they explore anew.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="session")
def _private_kernel_cache(tmp_path_factory):
    """Generated modules go to a temporary cache, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BACKPROP_CACHE", str(tmp_path_factory.mktemp("kernel-cache")))
    yield
    mp.undo()
