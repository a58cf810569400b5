"""The DNS name by which agents recognise the server, and the rule that keeps it the server's.

Agents check the server's certificate by chain and by this DNS SAN (through
`grpc.ssl_target_name_override`), not by SPIFFE ID: grpc's channel credentials have no hook for
a URI SAN check. So any certificate from the trust domain's CA that carries this name could
pose as the server; the server therefore never signs it into anyone else's SVID. One
definition, imported by both sides, so the name agents trust and the name the server reserves
cannot drift apart.
"""

from __future__ import annotations

from typing import Final

SERVER_TLS_NAME: Final = "insignia-server"


def is_reserved_dns_name(name: str) -> bool:
    """Would a certificate carrying DNS SAN `name` match what agents accept as the server?

    Compared the way TLS hostname checks do: case-insensitively, ignoring one trailing dot, and
    a wildcard `*` label standing for the whole left-most label.
    """
    wanted = SERVER_TLS_NAME.split(".")
    labels = name.lower().removesuffix(".").split(".")
    if len(labels) != len(wanted):
        return False
    pairs = enumerate(zip(labels, wanted, strict=True))
    return all(got == want or (i == 0 and got == "*") for i, (got, want) in pairs)
