"""An independent mTLS peer built on py-spiffe + spiffe-tls 0.4.0, run as a subprocess.

    spiffetls_peer.py server SOURCE ALLOWED_ID             prints "port N", echoes one line
    spiffetls_peer.py client SOURCE ALLOWED_ID HOST:PORT   sends "ping", prints the reply

SOURCE is `files:CERT,KEY,BUNDLE,TRUST_DOMAIN` (PEM files) or `workload-api:unix:///path`
(a real py-spiffe X509Source on an agent's socket). spiffe-tls only reads `svid`, `bundles`
and `subscribe_for_updates` from its source, so for files a small object holding py-spiffe's
own parsed files stands in; either way every SVID, bundle and SPIFFE ID check here is
py-spiffe's and OpenSSL's, none of Insignia's. py-spiffe runs in its own process: its
generated Workload API messages clash with Insignia's in one protobuf pool
(docs/design-notes.md §1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import SpiffeId, TrustDomain, X509Bundle, X509Source, X509Svid
from spiffetls import ListenOptions, dial, listen
from spiffetls.tlsconfig.authorize import authorize_id


class FileSource:
    def __init__(self, cert: str, key: str, bundle: str, trust_domain: str) -> None:
        self.svid = X509Svid.load(cert, key, Encoding.PEM)
        self.bundles = {X509Bundle.load(TrustDomain(trust_domain), bundle, Encoding.PEM)}

    def subscribe_for_updates(self, callback: Callable[[], None]) -> None:
        pass


def open_source(spec: str) -> X509Source:
    kind, _, value = spec.partition(":")
    if kind == "files":
        return FileSource(*value.split(","))  # type: ignore[return-value]
    if kind == "workload-api":
        return X509Source(socket_path=value, timeout_in_seconds=10)
    raise SystemExit(f"unknown source {spec!r}: expected files:... or workload-api:...")


def main() -> None:
    mode, spec, allowed = sys.argv[1:4]
    source = open_source(spec)
    authorize = authorize_id(SpiffeId(allowed))
    if mode == "server":
        listener = listen("127.0.0.1:0", source, ListenOptions(authorize_fn=authorize))
        print("port", listener.getsockname()[1], flush=True)
        conn, _ = listener.accept()
        conn.do_handshake()
        line = conn.recv(1024)
        conn.sendall(b"hello " + line)
    else:
        conn = dial(sys.argv[4], source, authorize_fn=authorize)
        conn.sendall(b"ping\n")
        print(conn.recv(1024).decode(), end="", flush=True)
    conn.shutdown()
    conn.close()


if __name__ == "__main__":
    main()
