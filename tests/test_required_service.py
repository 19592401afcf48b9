"""Tests that need a system service skip outside CI and fail under CI=true when it is missing."""

from __future__ import annotations

import pytest
from required_service import import_or_require, require


def test_a_present_service_adds_no_mark(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert require(None) == []


def test_a_missing_service_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    (mark,) = require("no frobnicator (apt-get install frobnicator)")
    assert mark.name == "skip"
    assert mark.kwargs["reason"] == "no frobnicator (apt-get install frobnicator)"
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        import_or_require("no_such_module_sqz", "no_such_module_sqz not installed")


@pytest.mark.parametrize("value", ["true", "True", "1"])
def test_a_missing_service_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true but a required service is missing"):
        require("no frobnicator")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_sqz not installed"):
        import_or_require("no_such_module_sqz", "no_such_module_sqz not installed")
