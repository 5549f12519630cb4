"""The SSRF guard: webhook URLs reach public addresses only, checked again when connecting."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from typing import Protocol

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from ..config import WebhooksConfig
from ..errors import ConfigError, WebhookUrlRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")

# Ranges refused even where the stdlib flags disagree, each with the reason a client reads.
_V4_RANGES: list[tuple[ipaddress.IPv4Network, str]] = [
    (ipaddress.IPv4Network("0.0.0.0/8"), "unspecified"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
    (ipaddress.IPv4Network("169.254.169.254/32"), "cloud-metadata"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local"),
    (ipaddress.IPv4Network("10.0.0.0/8"), "private"),
    (ipaddress.IPv4Network("172.16.0.0/12"), "private"),
    (ipaddress.IPv4Network("192.168.0.0/16"), "private"),
    (ipaddress.IPv4Network("100.64.0.0/10"), "cgnat"),
    (ipaddress.IPv4Network("192.0.0.0/24"), "reserved"),
    (ipaddress.IPv4Network("192.0.2.0/24"), "documentation"),
    (ipaddress.IPv4Network("198.51.100.0/24"), "documentation"),
    (ipaddress.IPv4Network("203.0.113.0/24"), "documentation"),
    (ipaddress.IPv4Network("198.18.0.0/15"), "benchmarking"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv4Network("255.255.255.255/32"), "broadcast"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved"),
]
_V6_RANGES: list[tuple[ipaddress.IPv6Network, str]] = [
    # Before fc00::/7, which holds it: the metadata address must read as what it is.
    (ipaddress.IPv6Network("fd00:ec2::254/128"), "cloud-metadata"),
    # A dual-stack socket sends these to the IPv4 address inside: no receiver needs them.
    (ipaddress.IPv6Network("::ffff:0:0/96"), "ipv4-mapped"),
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), "ipv4-mapped"),
    (ipaddress.IPv6Network("::/128"), "unspecified"),
    (ipaddress.IPv6Network("::1/128"), "loopback"),
    (ipaddress.IPv6Network("fe80::/10"), "link-local"),
    (ipaddress.IPv6Network("fc00::/7"), "private"),
    (ipaddress.IPv6Network("fec0::/10"), "private"),
    (ipaddress.IPv6Network("ff00::/8"), "multicast"),
    (ipaddress.IPv6Network("2001:db8::/32"), "documentation"),
    (ipaddress.IPv6Network("3fff::/20"), "documentation"),
    (ipaddress.IPv6Network("2001:2::/48"), "benchmarking"),
    (ipaddress.IPv6Network("100::/64"), "reserved"),
]
# Refused even with allow_private_networks: reaching these is never a webhook.
_HARD = frozenset(
    {"unspecified", "loopback", "link-local", "cloud-metadata", "ipv4-mapped", "multicast",
     "broadcast"}
)  # fmt: skip
# Refused even inside webhooks.allowed_networks.
_NEVER = frozenset({"cloud-metadata", "ipv4-mapped"})
# A host name label after IDNA encoding (RFC 1123; "_" as resolvers accept it).
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
MAX_URL = 2048


class Resolver(Protocol):
    """Turns a host name into addresses (the system's, or a fixed table in tests)."""

    async def resolve(self, host: str) -> list[str]:
        """Every address `host` resolves to; raises OSError when it does not resolve."""
        ...


class SystemResolver:
    """getaddrinfo, in the event loop's thread pool."""

    async def resolve(self, host: str) -> list[str]:
        """Every address `host` resolves to; raises OSError when it does not resolve."""
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


class StaticResolver:
    """A name → addresses table that can change under a test's feet (DNS rebinding)."""

    def __init__(self, table: Mapping[str, Iterable[str]] | None = None) -> None:
        self.table: dict[str, list[str]] = {k: list(v) for k, v in (table or {}).items()}

    async def resolve(self, host: str) -> list[str]:
        """The table's answer; OSError for a name it does not hold."""
        addresses = self.table.get(host.rstrip(".").lower())
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} does not resolve")
        return list(addresses)


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any spelling inet_aton accepts (127.1, 0x7f.1, 0177.0.0.1, 2130706433)."""
    parts = host.rstrip(".").split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        try:
            if part.lower().startswith("0x"):
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part, 8))
            elif part.isdigit() and part.isascii():
                numbers.append(int(part))
            else:
                return None
        except ValueError:
            return None
    # The last part fills every byte the earlier ones leave over (a.b.c.d, a.b.cd, a.bcd, abcd).
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for index, n in enumerate(head):
        value |= n << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def parse_ip(host: str) -> IPAddress | None:
    """`host` as an IP address (IPv6 with or without brackets, odd IPv4 spellings), else None."""
    bare = host.strip("[]").split("%")[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        return parse_ipv4_loose(bare)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # IPv6 forms that carry an IPv4 address a packet may end up at.
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _TEREDO and ip.teredo is not None:
        return ip.teredo[1]
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip))  # IPv4-compatible (deprecated, ::a.b.c.d)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address (a short reason), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        for net6, reason in _V6_RANGES:
            if ip in net6:
                return reason
        inner = _embedded_v4(ip)
        if inner is not None:
            problem = address_problem(inner)
            return f"{problem} (embedded in IPv6)" if problem else None
    else:
        for net4, reason in _V4_RANGES:
            if ip in net4:
                return reason
    return None if ip.is_global else "reserved"


def _refuse(reason: str, detail: str) -> WebhookUrlRefused:
    return WebhookUrlRefused(reason, f"webhook URL refused: {detail}")


class UrlGuard:
    """Validates webhook URLs against the scheme, credentials, allow-lists and address rules."""

    def __init__(self, config: WebhooksConfig, resolver: Resolver | None = None) -> None:
        self.config = config
        self.resolver: Resolver = resolver or SystemResolver()
        domains = [d.strip().lower().removeprefix("*.").strip(".") for d in config.allowed_domains]
        # ["*"] (or nothing) admits every public host.
        self._allowed = [] if "*" in domains else [d for d in domains if d]
        self._networks = _networks(config.allowed_networks)
        self._ports = frozenset(config.allowed_ports)

    def check_static(self, url: str) -> URL:
        """Everything that needs no DNS: scheme, userinfo, host, port, allow-list; raises."""
        if not isinstance(url, str):
            raise _refuse("malformed", "not a valid URL")
        if len(url) > MAX_URL:
            raise _refuse("too-long", f"the URL is longer than {MAX_URL} characters")
        try:
            parsed = URL(url)
            port = parsed.port
        except (ValueError, TypeError):
            # yarl reports a bad host (IDNA, characters) or port as ValueError or UnicodeError.
            raise _refuse("malformed", "not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise _refuse("scheme", "only http and https URLs are accepted")
        if parsed.user is not None or parsed.password is not None:
            raise _refuse("credentials", "credentials in the URL are not accepted")
        host = _checked_host(parsed.raw_host or "")
        literal = parse_ip(host)
        if self._allowed and not self._domain_allowed(host, literal):
            raise _refuse("domain-not-allowed", f"{host} is not in webhooks.allowed_domains")
        if literal is not None:
            self.check_address(literal)
        self._check_port(port)
        return parsed

    async def validate(self, url: str) -> URL:
        """The full check, resolving the host; raises WebhookUrlRefused with a reason."""
        parsed = self.check_static(url)
        host = (parsed.raw_host or "").rstrip(".")
        if parse_ip(host) is None:
            await self.resolve_checked(host)
        return parsed

    def check_address(self, ip: IPAddress) -> None:
        """Raise WebhookUrlRefused unless `ip` is public or the config admits it."""
        problem = address_problem(ip)
        if problem is None:
            return
        reason = problem.split(" ")[0]
        if reason not in _NEVER and any(ip in net for net in self._networks):
            return
        if self.config.allow_private_networks and reason not in _HARD:
            return
        raise _refuse(reason, f"{ip} is not a public address ({problem})")

    async def resolve_checked(self, host: str) -> list[IPAddress]:
        """Resolve `host` and check every address; only checked addresses come back."""
        literal = parse_ip(host)
        if literal is not None:
            self.check_address(literal)
            return [literal]
        try:
            answers = await self.resolver.resolve(host)
        except (OSError, UnicodeError):
            # UnicodeError: a name the IDNA codec cannot encode never resolves either.
            raise _refuse("unresolvable", f"{host} does not resolve") from None
        addresses = [a for a in (parse_ip(x) for x in answers) if a is not None]
        if not addresses:
            raise _refuse("unresolvable", f"{host} does not resolve")
        for address in addresses:
            try:
                self.check_address(address)
            except WebhookUrlRefused as exc:
                raise _refuse(exc.reason, f"{host} resolves to {address}: {exc.detail}") from None
        return addresses

    def _check_port(self, port: int | None) -> None:
        if not port:
            raise _refuse("port", "the URL names no usable port (0)")
        if self._ports and port not in self._ports:
            allowed = ", ".join(str(p) for p in sorted(self._ports))
            raise _refuse("port", f"port {port} is not in webhooks.allowed_ports ({allowed})")

    def _domain_allowed(self, host: str, literal: IPAddress | None) -> bool:
        if literal is not None:
            return host in self._allowed
        return any(host == d or host.endswith("." + d) for d in self._allowed)


def _checked_host(raw_host: str) -> str:
    """The host in lower case without its final dot; raises unless it is a sound name or IP."""
    host = raw_host.rstrip(".").lower()
    if not host:
        raise _refuse("no-host", "the URL has no host")
    if "%" in host:
        raise _refuse("malformed", "the host has a zone identifier or an escaped character")
    if parse_ip(host) is not None:
        return host
    labels = host.split(".")
    for label in labels:
        if not 1 <= len(label) <= 63:
            raise _refuse("malformed", "a host name label is empty or longer than 63 characters")
        if not _LABEL.match(label):
            raise _refuse("malformed", "the host name has characters a host name cannot have")
    if len(host) > 253:
        raise _refuse("malformed", "the host name is longer than 253 characters")
    if labels[-1].isdigit():
        # WHATWG reads a numeric last label as IPv4: one that does not parse is no name either.
        raise _refuse("malformed", "the host looks like an IPv4 address but is not one")
    return host


def _networks(cidrs: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """webhooks.allowed_networks parsed; raises ConfigError naming a bad entry."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"webhooks.allowed_networks: {cidr!r} is not a CIDR range") from None
    return networks


class ConnectRefused(OSError):
    """aiohttp's resolver boundary only passes OSError through: this carries the guard's refusal."""

    def __init__(self, refusal: WebhookUrlRefused) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that returns only addresses the guard checked: no second lookup."""

    def __init__(self, guard: UrlGuard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        """Resolve and check `host`; raises ConnectRefused when any address is not public."""
        try:
            addresses = await self.guard.resolve_checked(host)
        except WebhookUrlRefused as exc:
            raise ConnectRefused(exc) from None
        results: list[ResolveResult] = []
        for address in addresses:
            fam = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, fam):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=port,
                    family=fam,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not results:
            raise ConnectRefused(_refuse("unresolvable", f"{host} has no usable address"))
        return results

    async def close(self) -> None:
        """Nothing to release."""
