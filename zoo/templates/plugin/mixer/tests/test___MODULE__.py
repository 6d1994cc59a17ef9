import pytest

from zoo import conformance, registry


@pytest.mark.parametrize("check", list(conformance.CHECKS))
def test_conformance(check):
    conformance.CHECKS[check](registry.get_spec("__NAME__"))
