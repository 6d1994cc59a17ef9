import pytest

from zoo.tasks import conformance
from zoo.tasks.base import TASKS


@pytest.mark.parametrize("check", list(conformance.CHECKS))
def test_conformance(check):
    conformance.CHECKS[check](TASKS.get("__NAME__"))
