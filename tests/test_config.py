"""Config: TOML decoded into Structs, env overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdpj_async.config import Config, load_config
from pdpj_async.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_gives_the_documented_defaults() -> None:
    assert load_config(None, env={}) == Config()


def test_example_file_documents_every_key_with_its_default() -> None:
    import tomllib

    import msgspec

    from_file = load_config(EXAMPLE, env={})
    assert from_file == Config()
    documented = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    defaults = msgspec.to_builtins(Config())
    for section, values in defaults.items():
        assert section in documented, f"[{section}] missing from config.example.toml"
        missing = set(values) - set(documented[section])
        assert not missing, f"[{section}] keys not documented: {sorted(missing)}"


def test_wrong_type_names_the_key_and_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\npool_max = "ten"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == 'database.pool_max: expected int, got "ten"'


def test_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\npool_maxx = 5\n")
    with pytest.raises(ConfigError, match=r"^database\.pool_maxx: unknown key$"):
        load_config(path, env={})


def test_unknown_section_is_refused_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[databse]\npool_max = 5\n")
    with pytest.raises(ConfigError, match=r"^databse: unknown key$"):
        load_config(path, env={})


def test_bad_enum_value_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[storage]\nbackend = "ftp"\n')
    with pytest.raises(ConfigError, match=r"^storage\.backend: .*got \"ftp\""):
        load_config(path, env={})


def test_invalid_toml_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, "[database\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path, env={})


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_env_overrides_file_and_converts_types(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\npool_max = 5\n[http]\nport = 9000\n")
    env = {
        "PDPJ_ASYNC__DATABASE__POOL_MAX": "12",
        "PDPJ_ASYNC__DATABASE__MIGRATE_ON_START": "false",
        "PDPJ_ASYNC__WEBHOOKS__SCHEDULE_S": "[0, 1, 2]",
        "PDPJ_ASYNC__PDPJ__EXTRA_HEADERS": '{"X-Test": "1"}',
        "OTHER_VAR": "ignored",
    }
    config = load_config(path, env=env)
    assert config.database.pool_max == 12
    assert config.database.migrate_on_start is False
    assert config.http.port == 9000
    assert config.webhooks.schedule_s == [0, 1, 2]
    assert config.pdpj.extra_headers == {"X-Test": "1"}


def test_env_override_with_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r'^queue\.workers: expected int, got "many"$'):
        load_config(None, env={"PDPJ_ASYNC__QUEUE__WORKERS": "many"})


def test_env_override_of_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^queue\.wrokers: unknown key$"):
        load_config(None, env={"PDPJ_ASYNC__QUEUE__WROKERS": "3"})


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.http.port = 1  # type: ignore[misc]
