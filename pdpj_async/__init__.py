"""pdpj-async: PDPJ-Br lawsuit documents into object storage, asynchronously."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pdpj-async")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"
