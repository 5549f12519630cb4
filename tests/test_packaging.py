"""The built wheel: every package, and the files that break silently in a move (the named SQL,
the migrations, the sandbox's fixtures), are in it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pdpj_async"


def test_the_wheel_holds_every_package_the_sql_the_migrations_and_the_fixtures(
    tmp_path: Path,
) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("pdpj_async-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.parent for p in PACKAGE.rglob("__init__.py"))
    assert len(packages) >= 8
    for package in packages:
        assert f"{package.relative_to(ROOT)}/__init__.py" in names, package
    modules = [p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")]
    assert not [m for m in modules if "__pycache__" not in m and m not in names]
    sql = sorted((PACKAGE / "db" / "sql").glob("*.sql"))
    migrations = sorted((ROOT / "migrations").glob("*.sql"))
    fixtures = sorted((PACKAGE / "sandbox" / "fixtures").glob("*.json"))
    assert sql and migrations and fixtures
    for path in sql + fixtures:
        assert path.relative_to(ROOT).as_posix() in names, path
    for path in migrations:
        assert f"pdpj_async/migrations/{path.name}" in names, path


def test_every_module_of_the_package_has_a_place_in_the_layers() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [c for c in contracts if c["type"] == "layers"]
    named = {m.strip() for layer in layers["layers"] for m in layer.replace("|", ":").split(":")}
    top = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    top |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    # The sandbox has contracts of its own; every other module is in a layer, so that the
    # import rules apply to it (a module in no layer escapes them).
    missing = sorted(m for m in top - {"sandbox"} if f"pdpj_async.{m}" not in named)
    assert missing == []
