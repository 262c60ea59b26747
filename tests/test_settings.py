"""The ``TRIVHMC_*`` on/off switches (parallel/settings.py): what they accept and refuse, and
that every switch the code reads goes through :func:`parallel.settings.flag`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from parallel.settings import (
    CHOICES,
    OTHER_VARIABLES,
    SWITCHES,
    SettingError,
    check_switches,
    choice,
    flag,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _test_switch(monkeypatch):
    monkeypatch.setitem(SWITCHES, "TRIVHMC_TEST_SWITCH", "a switch for these tests")


@pytest.mark.parametrize("value", ["1", "true", "YES", " On ", "True"])
def test_on(monkeypatch, value):
    monkeypatch.setenv("TRIVHMC_TEST_SWITCH", value)
    assert flag("TRIVHMC_TEST_SWITCH", False) is True


@pytest.mark.parametrize("value", ["0", "false", "No", "OFF ", " 0"])
def test_off(monkeypatch, value):
    monkeypatch.setenv("TRIVHMC_TEST_SWITCH", value)
    assert flag("TRIVHMC_TEST_SWITCH", True) is False


@pytest.mark.parametrize("default", [False, True])
def test_unset_or_empty_gives_the_default(monkeypatch, default):
    monkeypatch.delenv("TRIVHMC_TEST_SWITCH", raising=False)
    assert flag("TRIVHMC_TEST_SWITCH", default) is default
    monkeypatch.setenv("TRIVHMC_TEST_SWITCH", "  ")
    assert flag("TRIVHMC_TEST_SWITCH", default) is default


@pytest.mark.parametrize("value", ["2", "maybe", "enable", "1.0", "-1", "y"])
def test_anything_else_is_refused_with_the_name_and_value(monkeypatch, value):
    monkeypatch.setenv("TRIVHMC_TEST_SWITCH", value)
    with pytest.raises(SettingError, match=re.escape(f"TRIVHMC_TEST_SWITCH={value!r}")) as err:
        flag("TRIVHMC_TEST_SWITCH", True)
    assert "'0'" in str(err.value) and "'1'" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_an_unregistered_switch_is_a_code_error(monkeypatch):
    monkeypatch.setenv("TRIVHMC_NOT_A_SWITCH", "1")
    with pytest.raises(KeyError, match="not a registered switch"):
        flag("TRIVHMC_NOT_A_SWITCH", True)


def test_check_switches_reads_every_switch(monkeypatch):
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    check_switches()
    for name in SWITCHES:
        monkeypatch.setenv(name, "sometimes")
        with pytest.raises(SettingError, match=name):
            check_switches()
        monkeypatch.setenv(name, "off")


def _names_in_code() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for package in ("app", "kernels", "parallel"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "settings.py" and path.parent.name == "parallel":
                continue
            for name in re.findall(r"""["'](TRIVHMC_[A-Z0-9_]+)["']""", path.read_text()):
                found.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    return found


def test_every_switch_in_the_code_is_registered_and_read_through_flag():
    """Every ``TRIVHMC_*`` name quoted in the code is a registered switch or one with values of
    its own, and no switch is read by hand (a hand-written ``!= "0"`` takes any value as on)."""
    found = _names_in_code()
    assert "TRIVHMC_PREFETCH" in found and "TRIVHMC_MODELS" in found  # the scan sees names
    unknown = {k: v for k, v in found.items() if k not in SWITCHES and k not in OTHER_VARIABLES}
    assert not unknown, f"TRIVHMC_* names neither in SWITCHES nor in OTHER_VARIABLES: {unknown}"
    stale = set(SWITCHES) - set(found) - {"TRIVHMC_TEST_SWITCH"}
    assert not stale, f"registered switches the code never reads: {stale}"
    by_hand = re.compile(r"""(?:environ\.get|environ\[|getenv)\(?\s*["'](TRIVHMC_\w+)""")
    for package in ("app", "kernels", "parallel"):
        for path in (ROOT / package).rglob("*.py"):
            for name in by_hand.findall(path.read_text()):
                assert name in OTHER_VARIABLES, (
                    f"{path}: {name} read without parallel.settings.flag"
                )


@pytest.mark.parametrize("value", ["auto", "EAGER", " eager ", "Auto"])
def test_choice_takes_its_words_in_any_case(monkeypatch, value):
    monkeypatch.setenv("TRIVHMC_STOUT_KERNEL", value)
    assert choice("TRIVHMC_STOUT_KERNEL", "auto") == value.strip().lower()


def test_choice_default_and_refusal(monkeypatch):
    monkeypatch.delenv("TRIVHMC_STOUT_KERNEL", raising=False)
    assert choice("TRIVHMC_STOUT_KERNEL", "auto") == "auto"
    monkeypatch.setenv("TRIVHMC_STOUT_KERNEL", " ")
    assert choice("TRIVHMC_STOUT_KERNEL", "eager") == "eager"
    monkeypatch.setenv("TRIVHMC_STOUT_KERNEL", "fused")
    with pytest.raises(SettingError, match=re.escape("TRIVHMC_STOUT_KERNEL='fused'")) as err:
        choice("TRIVHMC_STOUT_KERNEL", "auto")
    assert "'auto'" in str(err.value) and "'eager'" in str(err.value)
    with pytest.raises(SettingError, match="TRIVHMC_STOUT_KERNEL"):
        check_switches()
    assert set(CHOICES) <= set(OTHER_VARIABLES)  # documented in the deck reference too
