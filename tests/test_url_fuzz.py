"""The webhook URL validator, fuzzed: every generated URL is accepted or refused, nothing raises."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from pdpj_async.config import WebhooksConfig
from pdpj_async.errors import WebhookUrlRefused
from pdpj_async.webhooks.ssrf import UrlGuard, address_problem, parse_ip

PUBLIC = "93.184.215.14"


class IdnaResolver:
    """Encodes names as getaddrinfo does (IDNA) before answering from a table: no network."""

    def __init__(self) -> None:
        self.names = {"hooks.example.com": [PUBLIC], "private.example.com": ["10.0.0.7"]}

    async def resolve(self, host: str) -> list[str]:
        """The table's answer; UnicodeError for what IDNA cannot encode, as the system's."""
        host.encode("idna")
        found = self.names.get(host.rstrip(".").lower())
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, "does not resolve")
        return found


# Characters that break parsers: separators, controls, bidi and width variants, dots of other
# scripts, a soft hyphen, digits of other scripts, surrogates are left to st.text's own choice.
ODD = (
    "\x00\t\n\r @:/?#[]%\\."
    "\u3002\uff0e\uff61\u200b\u200d\u00ad\u202e\ufeff\u0663\uff11\u00e9\u0131ß"
)
label_chars = st.one_of(
    st.sampled_from("abcxyz019-_"),
    st.sampled_from(ODD),
    st.characters(codec="utf-8"),
)
label = st.text(label_chars, min_size=0, max_size=70) | st.integers(0, 320).map(lambda n: "a" * n)
name = st.lists(label, min_size=1, max_size=6).map(".".join)
long_name = st.integers(1, 200).map(lambda n: ".".join(["abcd"] * n))
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
mapped = st.ip_addresses(v=4).map(lambda ip: f"[::ffff:{ip}]")
v6_zone = st.tuples(st.ip_addresses(v=6), st.text(label_chars, max_size=8)).map(
    lambda t: f"[{t[0]}%25{t[1]}]"
)
odd_v4 = st.integers(0, 2**33).flatmap(
    lambda n: st.sampled_from([str(n), hex(n), "0" + oct(n)[2:], f"{n >> 8}.{n & 255}"])
)
host = st.one_of(name, long_name, v4, v6, mapped, v6_zone, odd_v4, st.just("hooks.example.com"))
port = st.one_of(st.none(), st.integers(-2, 70_000).map(str), st.text(label_chars, max_size=6))
# Half the URLs get a good scheme, so that most reach the host and address checks.
scheme = st.sampled_from(["http", "https"]) | st.sampled_from(
    ["HTTPS", "ftp", "javascript", "", "http:", "h\u0442tp"]
)
userinfo = st.sampled_from(["", "", "", "user@", "u:p@", "@", "%00@"])
path = st.text(label_chars, max_size=40)


@st.composite
def urls(draw: st.DrawFn) -> str:
    """A URL assembled from hostile parts."""
    where = draw(host)
    at = draw(port)
    netloc = f"{draw(userinfo)}{where}" + ("" if at is None else f":{at}")
    return f"{draw(scheme)}://{netloc}/{draw(path)}"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


GUARDS = {
    "default": UrlGuard(WebhooksConfig(), IdnaResolver()),
    "private": UrlGuard(
        WebhooksConfig(allow_private_networks=True, allowed_domains=["*"]), IdnaResolver()
    ),
    "networks": UrlGuard(
        WebhooksConfig(allowed_networks=["127.0.0.0/8", "10.0.0.0/8"], allowed_ports=[]),
        IdnaResolver(),
    ),
}


def check(loop: asyncio.AbstractEventLoop, guard: UrlGuard, url: str) -> None:
    """Accepted or refused with the guard's own error; an accepted URL is safe to connect to."""
    try:
        parsed = loop.run_until_complete(guard.validate(url))
    except WebhookUrlRefused as exc:
        assert exc.reason and str(exc).startswith("webhook URL refused: ")
        return
    assert_connectable(guard, parsed)


def assert_connectable(guard: UrlGuard, parsed: URL) -> None:
    """What an accepted URL must be: http(s), a sound host, an allowed port, a public address."""
    assert parsed.scheme in ("http", "https")
    assert parsed.user is None and parsed.password is None
    raw_host = parsed.raw_host or ""
    raw_host.encode("idna")  # what the resolver and aiohttp do with it
    assert raw_host.isascii() and str(parsed)
    assert parsed.port is not None and parsed.port > 0
    if guard.config.allowed_ports:
        assert parsed.port in guard.config.allowed_ports
    literal = parse_ip(raw_host)
    problem = address_problem(literal) if literal is not None else None
    if problem is not None:
        assert problem.split(" ")[0] not in {"loopback", "link-local", "cloud-metadata"} or any(
            literal in ipaddress.ip_network(n) for n in guard.config.allowed_networks
        )
        assert "ipv4-mapped" not in problem and "cloud-metadata" not in problem


FUZZ = settings(
    max_examples=3000,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("which", list(GUARDS))
def test_generated_urls_are_accepted_or_refused_never_raise(
    loop: asyncio.AbstractEventLoop, which: str
) -> None:
    guard = GUARDS[which]

    @FUZZ
    @given(urls())
    def run(url: str) -> None:
        check(loop, guard, url)

    run()


def test_arbitrary_text_is_accepted_or_refused_never_raises(
    loop: asyncio.AbstractEventLoop,
) -> None:
    @settings(FUZZ, max_examples=1500)
    @given(st.text(st.characters(codec="utf-8") | st.sampled_from(ODD), max_size=300))
    def run(text: str) -> None:
        check(loop, GUARDS["default"], text)
        check(loop, GUARDS["default"], "https://" + text)

    run()
