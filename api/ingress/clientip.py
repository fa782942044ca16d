"""The caller's address, trusting ``X-Forwarded-For`` only from configured proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def normalise_network(net: Network) -> Network:
    """An IPv4-mapped IPv6 block (``::ffff:10.0.0.0/104``) as the IPv4 block it stands for."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
    return net


def parse_network(text: str) -> Network:
    return normalise_network(ipaddress.ip_network(text.strip(), strict=False))


def _trusted(addr: Address, proxies: Sequence[Network]) -> bool:
    return any(addr.version == net.version and addr in net for net in proxies)


def client_ip(
    peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[Network]
) -> Address | None:
    """The right-most address that is not a trusted proxy, starting from the TCP peer."""
    addr = parse_ip(peer) if peer else None
    if addr is None or not proxies or not _trusted(addr, proxies):
        return addr
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        hop_addr = parse_ip(hop)
        if hop_addr is None:
            return addr  # a malformed hop: stop at the last address we could trust
        if not _trusted(hop_addr, proxies):
            return hop_addr
        addr = hop_addr
    return addr


def allowed(addr: Address | None, allowlist: Sequence[Network]) -> bool:
    if not allowlist:
        return True
    if addr is None:
        return False
    return any(addr.version == net.version and addr in net for net in allowlist)
