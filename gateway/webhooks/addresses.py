"""Which addresses a webhook may reach. Private, loopback, link-local and other non-public
addresses are refused unless WEBHOOKS_ALLOW_PRIVATE is set. A host is resolved once and the
delivery connects to the address that was checked, so a DNS answer that changes between the
check and the connection (rebinding) cannot reach an internal service."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> addresses (as strings); asyncio's getaddrinfo in production, a table in tests.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class AddressRefused(Exception):
    """The URL's host is, or resolves to, an address webhooks may not reach."""


# IPv6 prefixes whose addresses carry an IPv4 address a translator or tunnel reaches.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a network's own translator
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated; `::` and `::1` are in it too
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT): the last 32 bits
# RFC 6890's IETF protocol assignments: none is a public host (the standard library calls only
# parts of it private, so 192.0.0.8, the dummy address, passed as global).
_IETF_PROTOCOL = ipaddress.IPv4Network("192.0.0.0/24")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:  # 2002::/16: a 6to4 relay reaches the IPv4 address
        return address.sixtofour
    if address in _NAT64 or address in _IPV4_COMPATIBLE or address in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not be reached, or None if it may. An IPv6 address that carries an
    IPv4 one (mapped, translated, NAT64, 6to4, IPv4-compatible) is judged by the IPv4 address
    it reaches."""
    # `::1` and `::` lie in the IPv4-compatible range but are judged as themselves.
    if isinstance(address, ipaddress.IPv6Address) and not (
        address.is_loopback or address.is_unspecified
    ):
        if address in _LOCAL_NAT64:
            return f"{address} is a local NAT64 address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = refusal(embedded)
            return None if reason is None else f"{address} reaches {embedded}: {reason}"
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is a link-local address"
    if address.is_private:
        return f"{address} is a private address"
    if address in _IETF_PROTOCOL:
        return f"{address} is an IETF protocol assignment, not a public host"
    if address.is_multicast or address.is_unspecified or not address.is_global:
        return f"{address} is not a public address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_address(
    host: str, port: int, *, allow_private: bool, resolver: Resolver = system_resolver
) -> str:
    """The one address to connect to for `host`, resolved once; AddressRefused if the host
    cannot be resolved or (private addresses not allowed) any of its addresses is refused."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            answers = await resolver(host, port)
        except OSError as exc:
            raise AddressRefused(f"{host} does not resolve ({exc.strerror or exc})") from None
        except UnicodeError:  # the IDNA codec refuses the name (an empty or too long label)
            raise AddressRefused(f"{host} is not a valid host name") from None
        addresses = [ipaddress.ip_address(answer.split("%", 1)[0]) for answer in answers]
        if not addresses:
            raise AddressRefused(f"{host} does not resolve")
    if not allow_private:
        # Every answer: a host with one public and one internal address is refused outright.
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise AddressRefused(
                    f"{reason}; webhooks reach public addresses only"
                    " (WEBHOOKS_ALLOW_PRIVATE=true allows others)"
                )
    return str(addresses[0])
