import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from harness import HAIKU, HAIKU_PRICE, Stack  # noqa: E402

_ids = itertools.count()


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("stack")).start()
    yield s
    s.stop()


@pytest.fixture
def priced(stack):
    """The shared stack with HAIKU priced at HAIKU_PRICE."""
    stack.set_price(HAIKU, HAIKU_PRICE["input"], HAIKU_PRICE["output"])
    return stack


@pytest.fixture
def tenant_id(request):
    """A tenant name unique to the test, so tests share one stack safely."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]
    return f"t{next(_ids)}-{name}"
