"""The SSRF guard: webhook URLs that would reach anything but a public address are refused."""

from __future__ import annotations

import pytest

from pdpj_async.config import WebhooksConfig
from pdpj_async.errors import ConfigError, WebhookUrlRefused
from pdpj_async.keys import generate_webhook_secret
from pdpj_async.webhooks.client import WebhookClient
from pdpj_async.webhooks.ssrf import GuardedResolver, StaticResolver, UrlGuard, parse_ipv4_loose

PUBLIC = "93.184.215.14"
SECRET = generate_webhook_secret()
NAMES = {
    "hooks.example.com": [PUBLIC],
    "v6.example.com": ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "localhost.example.com": ["127.0.0.1"],
    "intranet.example.com": ["10.1.2.3"],
    "metadata.example.com": ["169.254.169.254"],
    "mixed.example.com": [PUBLIC, "192.168.1.10"],
    "cgnat.example.com": ["100.64.0.1"],
    "v6-loopback.example.com": ["::1"],
    "v6-ula.example.com": ["fd12:3456::1"],
    "mapped.example.com": ["::ffff:10.0.0.1"],
}

# (URL, the reason the client is given)
REFUSED: list[tuple[str, str]] = [
    ("ftp://hooks.example.com/x", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://hooks.example.com/", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("hooks.example.com/no-scheme", "scheme"),
    ("http://user:pw@hooks.example.com/", "credentials"),
    ("https://user@hooks.example.com/", "credentials"),
    ("http:///path-only", "no-host"),
    ("http://127.0.0.1/", "loopback"),
    ("http://127.255.255.254:8443/", "loopback"),
    ("http://localhost/", "unresolvable"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.0.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
    ("http://169.254.1.1/", "link-local"),
    ("http://100.64.0.1/", "cgnat"),
    ("http://100.127.255.254/", "cgnat"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://198.19.255.1/", "benchmarking"),
    ("http://192.0.2.10/", "documentation"),
    ("http://198.51.100.7/", "documentation"),
    ("http://203.0.113.99/", "documentation"),
    ("http://192.0.0.8/", "reserved"),
    # Odd IPv4 spellings that inet_aton (and so many HTTP stacks) read as loopback.
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://0x7f.0.0.1/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://0/", "unspecified"),
    ("http://0xa9fea9fe/", "cloud-metadata"),
    ("http://10.1/", "private"),
    # IPv6 and IPv6 forms that carry an IPv4 address.
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fd00::1]/", "private"),
    ("http://[fc00::abcd]/", "private"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[2001:db8::1]/", "documentation"),
    # IPv4-mapped: refused whatever the address inside (a dual-stack socket goes there).
    ("http://[::ffff:127.0.0.1]/", "ipv4-mapped"),
    ("http://[::ffff:169.254.169.254]/", "ipv4-mapped"),
    ("http://[::ffff:10.0.0.1]/", "ipv4-mapped"),
    ("http://[::ffff:93.184.215.14]/", "ipv4-mapped"),
    ("http://[::ffff:0:93.184.215.14]/", "ipv4-mapped"),
    ("http://[::127.0.0.1]/", "loopback"),
    ("http://[64:ff9b::127.0.0.1]/", "loopback"),
    ("http://[64:ff9b::a9fe:a9fe]/", "cloud-metadata"),
    ("http://[2002:7f00:1::]/", "loopback"),
    ("http://[2002:c0a8:101::1]/", "private"),
    ("http://[fd00:ec2::254]/", "cloud-metadata"),
    # Names whose answers are private (through the test resolver).
    ("http://localhost.example.com/", "loopback"),
    ("https://intranet.example.com/hook", "private"),
    ("http://metadata.example.com/", "cloud-metadata"),
    ("http://mixed.example.com/", "private"),
    ("http://cgnat.example.com/", "cgnat"),
    ("http://v6-loopback.example.com/", "loopback"),
    ("http://v6-ula.example.com/", "private"),
    ("http://mapped.example.com/", "ipv4-mapped"),
    ("http://does-not-exist.example.com/", "unresolvable"),
    # Ports other than webhooks.allowed_ports (80, 443, 8443 by default) and port 0.
    ("http://hooks.example.com:22/", "port"),
    ("http://hooks.example.com:6379/", "port"),
    ("https://hooks.example.com:8080/", "port"),
    ("http://hooks.example.com:0/", "port"),
    # Hosts no resolver should ever see: over-long labels and names, odd characters.
    ("http://" + "a" * 300 + ".example.com/", "malformed"),
    ("http://" + "a" * 64 + ".example.com/", "malformed"),
    ("http://" + "abcdefgh." * 32 + "com/", "malformed"),
    ("http://a..example.com/", "malformed"),
    ("http://ex%20ample.com/", "malformed"),
    ("http://exa mple.com/", "malformed"),
    ("http://-hooks.example.com/", "malformed"),
    ("http://1.2.3.999/", "malformed"),
    ("http://[fe80::1%25eth0]/", "malformed"),
    ("http://" + "é" * 300 + ".com/", "malformed"),
    ("http://hooks_.example.com\x00/", "malformed"),
    ("http://hooks.example.com:99999/", "malformed"),
]


def guard(**overrides: object) -> UrlGuard:
    return UrlGuard(WebhooksConfig(**overrides), StaticResolver(NAMES))  # type: ignore[arg-type]


def test_the_table_is_big_enough() -> None:
    assert len(REFUSED) >= 40


@pytest.mark.parametrize(("url", "reason"), REFUSED)
async def test_url_is_refused_with_a_clear_reason(url: str, reason: str) -> None:
    with pytest.raises(WebhookUrlRefused) as info:
        await guard().validate(url)
    assert info.value.reason == reason
    assert str(info.value).startswith("webhook URL refused: ")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/webhook",
        "http://hooks.example.com:8443/a?b=c",
        "https://HOOKS.example.com./x",
        "https://v6.example.com/",
        f"http://{PUBLIC}/hook",
        "http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
    ],
)
async def test_public_url_is_accepted(url: str) -> None:
    assert (await guard().validate(url)).scheme in ("http", "https")


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.258", "10.1.1.2"),
        ("192.168.1", "192.168.0.1"),
    ],
)
def test_odd_ipv4_spellings_read_as_inet_aton_does(spelling: str, address: str) -> None:
    assert str(parse_ipv4_loose(spelling)) == address


@pytest.mark.parametrize("host", ["256.1.1.1", "1.2.3.4.5", "example.com", "1.2.3.x", "4294967296"])
def test_names_that_only_look_numeric_are_not_addresses(host: str) -> None:
    assert parse_ipv4_loose(host) is None


async def test_allow_list_admits_the_domain_and_its_subdomains_only() -> None:
    g = guard(allowed_domains=["example.com"])
    await g.validate("https://hooks.example.com/x")
    with pytest.raises(WebhookUrlRefused) as info:
        await g.validate("https://example.com.evil.test/")
    assert info.value.reason == "domain-not-allowed"
    with pytest.raises(WebhookUrlRefused) as info:
        await g.validate(f"http://{PUBLIC}/")
    assert info.value.reason == "domain-not-allowed"


async def test_private_networks_are_allowed_when_switched_on() -> None:
    g = guard(allow_private_networks=True)
    await g.validate("http://intranet.example.com/")
    await g.validate("http://10.1.2.3:8443/hook")
    await g.validate("http://[fd12:3456::1]/")
    with pytest.raises(WebhookUrlRefused):
        await g.validate("ftp://10.1.2.3/")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://localhost.example.com/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
        ("http://metadata.example.com/", "cloud-metadata"),
        ("http://[fd00:ec2::254]/", "cloud-metadata"),
        ("http://[::ffff:10.1.2.3]/", "ipv4-mapped"),
        ("http://[64:ff9b::127.0.0.1]/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
    ],
)
async def test_loopback_link_local_and_metadata_stay_refused_with_private_networks_on(
    url: str, reason: str
) -> None:
    with pytest.raises(WebhookUrlRefused) as info:
        await guard(allow_private_networks=True).validate(url)
    assert info.value.reason == reason


async def test_allowed_networks_admit_an_on_premise_receiver_and_nothing_else() -> None:
    g = guard(allowed_networks=["127.0.0.0/8", "10.1.0.0/16"], allowed_ports=[])
    await g.validate("http://127.0.0.1:8080/hook")
    await g.validate("http://localhost.example.com:9000/")
    await g.validate("http://intranet.example.com/")
    for url, reason in [
        ("http://10.2.0.1/", "private"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "ipv4-mapped"),
    ]:
        with pytest.raises(WebhookUrlRefused) as info:
            await g.validate(url)
        assert info.value.reason == reason


async def test_cloud_metadata_is_refused_even_inside_allowed_networks() -> None:
    g = guard(allowed_networks=["169.254.0.0/16", "fd00::/8"])
    await g.validate("http://169.254.1.1/")
    for url in [
        "http://169.254.169.254/",
        "http://metadata.example.com/",
        "http://[fd00:ec2::254]/",
    ]:
        with pytest.raises(WebhookUrlRefused) as info:
            await g.validate(url)
        assert info.value.reason == "cloud-metadata"


def test_an_allowed_network_that_is_not_a_cidr_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"webhooks\.allowed_networks: 'intranet'"):
        guard(allowed_networks=["intranet"])


async def test_only_the_allowed_ports_are_accepted() -> None:
    for url in [
        "http://hooks.example.com/",
        "https://hooks.example.com:8443/",
        "http://hooks.example.com:443/",
    ]:
        await guard().validate(url)
    await guard(allowed_ports=[9000]).validate("http://hooks.example.com:9000/")
    with pytest.raises(WebhookUrlRefused) as info:
        await guard(allowed_ports=[9000]).validate("https://hooks.example.com/")
    assert info.value.reason == "port" and "9000" in info.value.detail
    await guard(allowed_ports=[]).validate("http://hooks.example.com:6379/")


@pytest.mark.parametrize("domains", [["*"], ["*", "example.com"], [" * "]])
async def test_a_star_in_allowed_domains_admits_any_public_host(domains: list[str]) -> None:
    g = guard(allowed_domains=domains)
    await g.validate("https://hooks.example.com/x")
    await g.validate("https://v6.example.com/")
    await g.validate(f"http://{PUBLIC}/")
    with pytest.raises(WebhookUrlRefused) as info:
        await g.validate("http://intranet.example.com/")
    assert info.value.reason == "private"


async def test_a_wildcard_domain_admits_its_subdomains() -> None:
    g = guard(allowed_domains=["*.example.com"])
    await g.validate("https://hooks.example.com/x")
    with pytest.raises(WebhookUrlRefused):
        await g.validate("https://example.com.evil.test/")


async def test_a_300_character_label_is_refused_before_the_system_resolver_sees_it() -> None:
    # The system resolver's IDNA encoding raised UnicodeError here, which the API answered 500.
    g = UrlGuard(WebhooksConfig())
    with pytest.raises(WebhookUrlRefused) as info:
        await g.validate("https://" + "a" * 300 + ".example.com/hook")
    assert info.value.reason == "malformed"
    assert "63" in info.value.detail


async def test_a_resolver_that_cannot_encode_a_name_means_unresolvable() -> None:
    class Idna:
        async def resolve(self, host: str) -> list[str]:
            host.encode("idna")
            raise OSError("no network in tests")

    g = UrlGuard(WebhooksConfig(), Idna())
    with pytest.raises(WebhookUrlRefused) as info:
        await g.resolve_checked("a" * 70 + ".example.com")
    assert info.value.reason == "unresolvable"


async def test_connect_time_resolver_returns_only_checked_addresses() -> None:
    resolver = GuardedResolver(guard())
    answers = await resolver.resolve("hooks.example.com", 443)
    assert [a["host"] for a in answers] == [PUBLIC]
    assert answers[0]["port"] == 443
    with pytest.raises(OSError, match=r"192\.168\.1\.10"):
        await resolver.resolve("mixed.example.com", 443)


async def test_a_name_that_changes_its_answer_after_the_check_is_refused_at_connect() -> None:
    names = StaticResolver(NAMES)
    client = WebhookClient(WebhooksConfig(timeout_s=2), names)
    await client.start()
    try:
        await client.guard.validate("http://hooks.example.com/hook")
        names.table["hooks.example.com"] = ["127.0.0.1"]  # DNS rebinding
        result = await client.post("http://hooks.example.com/hook", "msg_1", b"{}", [SECRET], 1)
    finally:
        await client.close()
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("refused at connect time: ")
    assert "127.0.0.1" in result.error


async def test_a_literal_private_address_is_refused_before_any_connection() -> None:
    client = WebhookClient(WebhooksConfig(timeout_s=2), StaticResolver(NAMES))
    await client.start()
    try:
        result = await client.post("http://2130706433:1/", "msg_1", b"{}", [SECRET], 1)
    finally:
        await client.close()
    assert result.error is not None and result.error.startswith("refused: ")
