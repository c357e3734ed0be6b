"""The SSRF guard: URLs that customers give us and that Tidehub itself fetches.

A ``webhook_url`` or a media URL in a task's input is an instruction to make *our* server open a
connection. Unchecked, it lets a customer reach what only the gateway can reach: the admin API on
loopback, the database on the private network, the cloud metadata service at 169.254.169.254.
So every such URL must end at a public address, unless the operator explicitly allows the address
(the demo and the tests allow the simulator's ``127.0.0.1:<port>``).

Checking the URL's text is not enough, because the address that matters is the one the socket
connects to, and that is decided later and elsewhere:

* **Spelling.** ``getaddrinfo``/``inet_aton`` accept ``2130706433``, ``0x7f.0.0.1``,
  ``0177.0.0.1`` and ``127.1`` as 127.0.0.1, and IPv6 can carry an IPv4 address inside it
  (``::ffff:127.0.0.1``, 6to4, NAT64, Teredo). URLs are parsed with yarl (the parser aiohttp
  uses, so both see the same host), non-canonical numeric IPv4 forms are refused outright, and
  embedded IPv4 addresses are unwrapped before they are judged.
* **DNS.** A name is judged by what it resolves to, with the same resolver the connection uses.
  Every address must pass: a name with one public and one private answer is refused, because
  the client may fall back to the private one.
* **Time (DNS rebinding) and redirects.** :meth:`URLGuard.check` runs when the task is
  submitted, the fetch may run minutes later, and each redirect hop names a new host. Hence
  :meth:`URLGuard.session`, whose connector applies the same rule at the moment of connecting,
  for the first request and for every redirect hop alike:

  - hostnames go through a resolver wrapper (:class:`aiohttp.abc.AbstractResolver`) that judges
    the addresses the connector is about to dial, so an answer that changed since
    :meth:`~URLGuard.check` is judged afresh, and the answer is what gets used (no second lookup
    that could differ);
  - aiohttp never calls the resolver for IP literals, so the connector's public ``connect()``
    (which aiohttp calls for every request, redirects included, before touching the pool or the
    network) judges literal hosts itself and refuses the non-canonical numeric forms.

  We chose the connector over the alternatives because it is the one choke point every request
  of the session passes through: a ``trace_config`` ``on_request_start`` fires once per call,
  not per redirect hop; client middlewares can be replaced per request (``middlewares=...``);
  following redirects by hand only protects callers who remember to use that helper. A refusal
  raises :class:`BlockedURL` (an :class:`~tidehub.errors.InvalidInput`), which aiohttp
  lets through unwrapped, so callers handle one error type whether it came from ``check()`` or
  from a fetch.

Guard sessions never use proxies (``trust_env`` is off and an explicit ``proxy=`` is refused):
through a proxy, the proxy resolves and connects, and nothing here could see the real target.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import Connection
from aiohttp.resolver import DefaultResolver
from yarl import URL

from tidehub.errors import InvalidInput, PayloadTooLarge, clipped

__all__ = ["BlockedURL", "StaticResolver", "URLGuard"]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_SCHEMES = frozenset({"http", "https"})
#: Distinct hosts one request's media URLs may name (each costs a DNS lookup at submit).
MAX_MEDIA_HOSTS = 32

# Every IPv4 spelling inet_aton() accepts besides the dotted quad: 1 to 4 parts, each decimal,
# octal (leading 0) or hex (0x), e.g. 2130706433, 0x7f.0.0.1, 0177.0.0.1, 127.1, plus a trailing
# dot. They are never needed in a real URL and different parsers disagree on them.
_NUMERIC_IPV4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)

_SHARED_V4 = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT; is_private misses it
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are the IPv4 address
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local-use translation
_IPV4_COMPAT = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


class BlockedURL(InvalidInput):
    """A client-supplied URL that would make Tidehub connect where it must not.

    A 422 like any other invalid input: the customer sent a URL we refuse to fetch. The message
    names the field and the reason, never the allow-list.
    """


@dataclass(frozen=True)
class _AllowEntry:
    network: IPNetwork
    port: int | None  # None: any port

    def admits(self, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        return address.version == self.network.version and address in self.network


def _parse_allow_entry(text: str) -> _AllowEntry:
    """``1.2.3.4``, ``10.0.0.0/8``, ``::1``, ``fc00::/7``, each optionally with a port.

    IPv6 with a port needs brackets (``[::1]:8001``), as in a URL. Only addresses: a name in an
    allow-list would be judged by whatever it resolves to on the day, which is the problem this
    module exists to avoid.
    """
    entry = text.strip()
    port_text: str | None = None
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise ValueError(f"allow entry {text!r}: missing ']'")
        rest = entry[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"allow entry {text!r}: expected ':port' after ']'")
            port_text = rest[1:]
        entry = entry[1:close]
    elif entry.count(":") == 1:
        entry, port_text = entry.split(":")
    try:
        network = ipaddress.ip_network(entry, strict=True)
    except ValueError as exc:
        raise ValueError(f"allow entry {text!r}: not an IP address or CIDR network ({exc})") from None
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"allow entry {text!r}: port must be 1-65535")
        port = int(port_text)
    return _AllowEntry(network, port)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a packet to this IPv6 address really ends up at, if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPAT and int(address) > 1:  # :: and ::1 are themselves
        return ipaddress.IPv4Address(int(address))
    return None


def _kind(address: IPAddress) -> str | None:
    """Why this address is not public, in words for the customer; None if it is public.

    The explicit properties come first for a precise message; ``is_global`` last catches the
    rest of the special-purpose registry (documentation, benchmarking, ...). Multicast, 6to4 and
    site-local addresses count as "global" in the ipaddress module, hence the explicit checks.
    """
    if address.is_unspecified:
        return "an unspecified"
    if address.is_loopback:
        return "a loopback"
    if address.is_link_local:
        return "a link-local"
    if address.is_multicast:
        return "a multicast"
    if address in _SHARED_V4:
        return "a shared (carrier-grade NAT)"
    if address.is_reserved:
        return "a reserved"
    if isinstance(address, ipaddress.IPv6Address) and (address.is_site_local or address in _NAT64_LOCAL):
        return "a non-public"
    if address.is_private:
        return "a private"
    if not address.is_global:
        return "a non-public"
    return None


def _refusal(address: IPAddress) -> str | None:
    """The reason to refuse connecting to ``address`` (ignoring the allow-list), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            kind = _kind(inner)
            if kind is not None:
                return f"{kind} address {inner} (as {address})"
            if address.ipv4_mapped is not None or address in _IPV4_COMPAT or address in _NAT64:
                # Only another spelling of (or, for NAT64, the gateway's IPv6-only route to) a
                # public IPv4 address; judged by that address, not by the ::/8 it sits in.
                return None
    kind = _kind(address)
    return None if kind is None else f"{kind} address {address}"


def _literal_host(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal; None for a name to resolve.

    Raises ValueError for numeric spellings that are not a canonical literal: resolvers and
    aiohttp would each give them their own meaning (127.0.0.1, or an error).
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host or _NUMERIC_IPV4.fullmatch(host):
        raise ValueError(host)
    return None


def _valid_name(host: str) -> bool:
    """DNS's own limits: labels of 1 to 63 characters, 253 in all (one trailing dot allowed)."""
    name = host[:-1] if host.endswith(".") else host
    return 0 < len(name) <= 253 and all(0 < len(label) <= 63 for label in name.split("."))


class StaticResolver(AbstractResolver):
    """A resolver from a fixed table, for tests and demos: no DNS is ever asked.

    Unknown names fail like an unknown name in DNS. The table can be changed at run time
    (``resolver.table["name"] = [...]``), which is how tests simulate DNS rebinding.
    """

    def __init__(self, table: Mapping[str, str | Sequence[str]]) -> None:
        self.table: dict[str, str | Sequence[str]] = {name.lower().rstrip("."): value for name, value in table.items()}

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        value = self.table.get(host.lower().rstrip("."))
        if value is None:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: name not in the static table")
        results: list[ResolveResult] = []
        for text in [value] if isinstance(value, str) else value:
            address = ipaddress.ip_address(text)
            addr_family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            if family not in (socket.AF_UNSPEC, addr_family):
                continue
            results.append(ResolveResult(hostname=host, host=str(address), port=port, family=addr_family,
                                         proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV))
        if not results:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: no address of the requested family")
        return results

    async def close(self) -> None:
        pass


class URLGuard:
    """Decides whether Tidehub may connect to a URL, and makes HTTP sessions that obey it.

    One guard per process, built from config with :meth:`from_config`. ``resolver`` replaces
    DNS (tests use :class:`StaticResolver`); by default aiohttp's default resolver is used, the
    same one its connector would use, so :meth:`check` sees what a fetch will connect to.
    """

    def __init__(self, allow: Iterable[str] = (), *, resolver: AbstractResolver | None = None) -> None:
        self._allow = tuple(_parse_allow_entry(entry) for entry in allow)
        self._resolver = resolver

    @classmethod
    def from_config(cls, value: str | None, *, resolver: AbstractResolver | None = None) -> URLGuard:
        """A guard from the operator's comma-separated allow-list, e.g. ``"127.0.0.1:8001,::1"``.

        Empty or None allows nothing but public addresses, the production default. Bad entries
        raise ValueError at startup rather than silently allowing nothing (or everything).
        """
        entries = [part for part in (value or "").split(",") if part.strip()]
        return cls(entries, resolver=resolver)

    # -- the rule ------------------------------------------------------------------------------

    def _allowed(self, address: IPAddress, port: int) -> bool:
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address):
            if address.scope_id:
                candidates.append(ipaddress.IPv6Address(str(address).split("%")[0]))
            if address.ipv4_mapped is not None:
                candidates.append(address.ipv4_mapped)
        return any(entry.admits(candidate, port) for entry in self._allow for candidate in candidates)

    def _judge(self, address: IPAddress, port: int, field: str | None) -> None:
        if self._allowed(address, port):
            return
        reason = _refusal(address)
        if reason is not None:
            raise _blocked(field, f"resolves to {reason}")

    def _judge_target(self, url: URL, field: str | None) -> IPAddress | None:
        """The checks that need no DNS: scheme, host, numeric spellings, literal addresses.

        Returns the literal address (already judged) or None when the host is a name.
        """
        if url.scheme not in _SCHEMES:
            shown = clipped(url.scheme or "none", 20)
            raise _blocked(field, f"must be an http or https URL (scheme: {shown})")
        host = url.raw_host
        if not host:
            raise _blocked(field, "must be an absolute URL with a host")
        port = url.port
        if port is None:  # pragma: no cover - yarl fills in the default for http(s)
            raise _blocked(field, "must be an absolute URL with a host")
        try:
            literal = _literal_host(host)
        except ValueError:
            raise _blocked(field, f"has a host that is not a canonical IP address: {clipped(host)}") from None
        if literal is not None:
            self._judge(literal, port, field)
        elif not _valid_name(host):
            # The resolver would raise UnicodeError (from the idna codec), not a lookup failure.
            raise _blocked(field, f"has a host name with an empty or over-long label: {clipped(host)}")
        return literal

    async def check(self, url: str, field: str) -> None:
        """Refuse ``url`` unless it is an http(s) URL that resolves only to allowed addresses.

        Call it where the customer hands the URL over, so a bad URL is a 422 on submit rather
        than a silent failure later. It only resolves; it never connects. It does not replace
        :meth:`session` at fetch time: DNS answers and redirects can change in between.
        """
        parsed = self._parse(url, field)
        if parsed is not None:
            await self._resolve_and_judge(parsed.raw_host, parsed.port, field, unresolvable_ok=False)

    async def check_media(self, urls: Sequence[tuple[str, str]]) -> None:
        """Refuse media URLs (``(field, url)`` pairs, e.g. a task's ``input.image_urls[0]``) that
        the upstream is to fetch: each must be a ``data:`` URL, or an http(s) URL whose host is
        public (or allowed) by the same rule as :meth:`check`.

        Tidehub does not fetch these itself, so one difference: a name that does not resolve here
        is let through (the upstream resolves it in its own network and reports what it finds).
        Each distinct host is resolved once, all of them at once, at most ``MAX_MEDIA_HOSTS``.
        The error names the first offending field.
        """
        hosts: dict[tuple[str, int], str] = {}  # (host, port) -> the first field naming it
        for field, url in urls:
            if url[:5].lower() == "data:":
                continue
            parsed = self._parse(url, field)
            if parsed is None:
                continue
            key = (parsed.raw_host or "", parsed.port or 0)
            if key not in hosts:
                if len(hosts) == MAX_MEDIA_HOSTS:
                    raise _blocked(field, f"is on one host too many: at most {MAX_MEDIA_HOSTS} different hosts "
                                          f"per request")
                hosts[key] = field
        outcomes = await asyncio.gather(*(self._resolve_and_judge(host, port, field, unresolvable_ok=True)
                                          for (host, port), field in hosts.items()), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _parse(self, url: str, field: str) -> URL | None:
        """The checks that need no DNS; the parsed URL when its host is a name left to resolve."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            raise _blocked(field, "is not a valid URL") from None
        if not parsed.absolute:
            raise _blocked(field, "must be an absolute http or https URL with a host")
        if parsed.raw_user is not None or parsed.raw_password is not None or "@" in (parsed.raw_authority or ""):
            # A URL with credentials is either a secret sent to us by mistake or a disguise
            # (http://trusted.example@127.0.0.1/ goes to 127.0.0.1).
            raise _blocked(field, "must not contain credentials (user:password@)")
        if self._judge_target(parsed, field) is not None:
            return None
        return parsed

    async def _resolve_and_judge(self, host: str | None, port: int | None, field: str, *,
                                 unresolvable_ok: bool) -> None:
        assert host is not None and port is not None
        resolver = self._resolver or DefaultResolver()
        try:
            results = await resolver.resolve(host, port, family=socket.AF_UNSPEC)
        except (OSError, UnicodeError):
            results = []
        finally:
            if self._resolver is None:
                await resolver.close()
        if not results:
            if unresolvable_ok:
                return
            raise _blocked(field, f"has a host that does not resolve: {clipped(host)}")
        for result in results:
            self._judge(ipaddress.ip_address(result["host"]), port, field)

    # -- enforcement at connect time -----------------------------------------------------------

    def session(self, *, field: str | None = None, **kwargs: Any) -> aiohttp.ClientSession:
        """An aiohttp session that refuses, at connect time, whatever :meth:`check` refuses.

        Applies to the first request and to every redirect hop; raises :class:`BlockedURL`
        (with ``field`` when given) before any byte reaches a refused address. ``kwargs`` go to
        :class:`aiohttp.ClientSession`; the connector and proxy settings are the guard's own.
        """
        for name in ("connector", "connector_owner", "trust_env", "proxy"):
            if name in kwargs:
                raise TypeError(f"URLGuard.session() does not accept {name!r}: the guard owns the connection")
        connector = _GuardedConnector(self, field)
        return aiohttp.ClientSession(connector=connector, connector_owner=True, trust_env=False, **kwargs)

    async def fetch(self, url: str, field: str, *, max_bytes: int, timeout: float = 30.0, max_redirects: int = 5) -> bytes:
        """GET ``url`` through the guard and return at most ``max_bytes`` of body.

        For one-off media downloads. Every failure is the customer's URL's fault from the
        caller's point of view, so each is an InvalidInput (or PayloadTooLarge) naming ``field``.
        """
        await self.check(url, field)
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.session(field=field, timeout=client_timeout) as session:
                async with session.get(url, max_redirects=max_redirects) as response:
                    if response.status >= 400:
                        raise InvalidInput(f"{field} could not be fetched: HTTP {response.status}", field=field)
                    if response.content_length is not None and response.content_length > max_bytes:
                        raise PayloadTooLarge(f"{field} is larger than {max_bytes} bytes", field=field)
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        body += chunk
                        if len(body) > max_bytes:
                            raise PayloadTooLarge(f"{field} is larger than {max_bytes} bytes", field=field)
                    return bytes(body)
        except aiohttp.TooManyRedirects:
            raise InvalidInput(f"{field} could not be fetched: more than {max_redirects} redirects", field=field) from None
        except (aiohttp.ClientError, TimeoutError):
            raise InvalidInput(f"{field} could not be fetched", field=field) from None


def _blocked(field: str | None, reason: str) -> BlockedURL:
    return BlockedURL(f"{field or 'URL'} {reason}", field=field)


class _GuardedResolver(AbstractResolver):
    """Resolves through the guard's (or aiohttp's default) resolver, then judges every answer."""

    def __init__(self, guard: URLGuard, field: str | None) -> None:
        self._guard = guard
        self._field = field
        self._owned = guard._resolver is None
        self._inner: AbstractResolver = guard._resolver or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            self._guard._judge(ipaddress.ip_address(result["host"]), result["port"] or port, self._field)
        return results

    async def close(self) -> None:
        if self._owned:
            await self._inner.close()


class _GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector whose every connection, redirects included, goes through the guard."""

    def __init__(self, guard: URLGuard, field: str | None) -> None:
        self._guarded_resolver = _GuardedResolver(guard, field)
        super().__init__(resolver=self._guarded_resolver)
        self._guard = guard
        self._field = field

    async def connect(self, req: aiohttp.ClientRequest, *args: Any, **kwargs: Any) -> Connection:
        if req.proxy is not None:
            raise ValueError("URLGuard sessions do not use proxies: the proxy would choose the address")
        # Literal IPs never reach the resolver; names are judged there, on the addresses dialled.
        self._guard._judge_target(req.url, self._field)
        return await super().connect(req, *args, **kwargs)

    async def close(self, **kwargs: Any) -> None:
        try:
            await super().close(**kwargs)
        finally:
            await self._guarded_resolver.close()
