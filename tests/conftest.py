"""Shared fixtures come from tests/fixtures/*, one module per real component."""

pytest_plugins = [
    "tests.fixtures.pg",
    "tests.fixtures.app",
    "tests.fixtures.sandbox",
    "tests.fixtures.s3",
    "tests.fixtures.receiver",
    "tests.fixtures.pgbouncer",
]
