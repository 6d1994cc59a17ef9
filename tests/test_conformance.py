"""Every registered mixer, built-in or plugin, against the mixer contract."""

import pytest

from zoo import conformance, registry

NAMES = registry.names()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("check", list(conformance.CHECKS))
@pytest.mark.parametrize("name", NAMES)
def test_conformance(name, check):
    conformance.CHECKS[check](registry.get_spec(name))
