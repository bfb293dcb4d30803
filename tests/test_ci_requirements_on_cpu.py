"""The rule for optional test resources (tests/conftest.py): skipped on a developer's machine, a failure in
CI (``RECAP_CI=1``), so CI can never go green by skipping what it must check."""

import pytest
from conftest import require


def test_a_missing_resource_is_skipped_outside_ci(monkeypatch):
    monkeypatch.delenv("RECAP_CI", raising=False)
    monkeypatch.delenv("RECAP_REQUIRE_JUDGE_SERVER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no data here"):
        require(False, "no data here")
    require(True, "present")  # nothing happens


def test_a_missing_resource_fails_in_ci(monkeypatch):
    monkeypatch.setenv("RECAP_CI", "1")
    with pytest.raises(pytest.fail.Exception, match="no data here .CI must provide it."):
        require(False, "no data here")
