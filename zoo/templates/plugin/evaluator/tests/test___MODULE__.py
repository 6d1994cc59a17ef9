import pytest

from zoo.eval import conformance
from zoo.eval.base import get_evaluator


@pytest.mark.parametrize("check", list(conformance.CHECKS))
def test_conformance(check):
    conformance.CHECKS[check](get_evaluator("__NAME__"))
