from pathlib import Path

import pytest

from haidang.ground.settings import SettingsError, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "haidang.example.toml"


def test_example_file_loads():
    s = load_settings(EXAMPLE, environ={})
    assert s.gateway.ae_title == "HAIDANG"
    assert s.gateway.database_url.startswith("sqlite:///")
    assert s.routes, "the example ships at least one routing rule"


def test_environment_overrides_file(tmp_path):
    s = load_settings(EXAMPLE, environ={"HAIDANG_GATEWAY__PORT": "11999",
                                        "HAIDANG_GATEWAY__DATABASE_URL": "postgresql://h@db/haidang"})
    assert s.gateway.port == 11999
    assert s.gateway.database_url == "postgresql://h@db/haidang"


def test_bad_value_names_the_setting(tmp_path):
    with pytest.raises(SettingsError, match="gateway.port"):
        load_settings(None, environ={"HAIDANG_GATEWAY__PORT": "not-a-port"})


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(SettingsError, match="example"):
        load_settings(tmp_path / "nope.toml", environ={})
