"""systemd credentials (LoadCredential=): config values that name files the service alone reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdpj_async.config import load_config
from pdpj_async.errors import ConfigError

CONFIG = """
[database]
dsn = "credential:pdpj-dsn"
[pdpj]
token_file = "${CREDENTIALS_DIRECTORY}/pdpj-token"
[storage]
signing_key = "credential:signing-key"
"""


def test_credential_values_are_read_from_the_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "pdpj-dsn").write_text("postgresql://app:pw@db.internal/pdpj\n")
    (creds / "signing-key").write_text("k" * 48 + "\n")
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    config = load_config(path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.database.dsn == "postgresql://app:pw@db.internal/pdpj"
    assert config.storage.signing_key == "k" * 48
    assert config.pdpj.token_file == f"{creds}/pdpj-token"
    # Environment overrides may name credentials too.
    env = {"CREDENTIALS_DIRECTORY": str(creds), "PDPJ_ASYNC__DATABASE__DSN": "credential:pdpj-dsn"}
    assert load_config(None, env=env).database.dsn.startswith("postgresql://app:")


def test_a_missing_credential_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigError, match=r"^database\.dsn: names a credential, but"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match=r"^database\.dsn: cannot read credential 'pdpj-dsn'"):
        load_config(path, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"^database\.dsn: expected credential:NAME"):
        load_config(
            None,
            env={"CREDENTIALS_DIRECTORY": "/x", "PDPJ_ASYNC__DATABASE__DSN": "credential:../x"},
        )
