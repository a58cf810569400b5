"""The inode of the other end of a connected Unix socket, from the kernel's unix_diag.

A Workload API connection is proven by who holds it (``insignia.daemon.peercred.holders``), and the
fd tables in /proc name sockets only by inode. Our accepted socket's inode is an fstat away,
but the client's end has its own inode, which only the sock_diag netlink family reports
(``UNIX_DIAG_PEER``, as ``ss -x`` shows it). The Python standard library has no binding, and
the request is one fixed-size struct, so it is encoded here (sock_diag(7), unix_diag.h).

sock_diag answers only about sockets of the network namespace the netlink socket lives in,
and an accepted Unix connection belongs to the namespace of the process that connected (a
container or pod reaching a host-path socket). So the query goes out from the accepted
socket's own namespace, found with SIOCGSKNS, never from the agent's.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
UDIAG_SHOW_PEER = 0x4
UNIX_DIAG_PEER = 2
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQUEST = struct.Struct("=BBHIIIII")  # family, protocol, pad, states, ino, show, cookie[2]
_MESSAGE = struct.Struct("=BBBBIII")  # family, type, state, pad, ino, cookie[2]
_RTATTR = struct.Struct("=HH")  # len, type
SIOCGSKNS = 0x894C  # linux/sockios.h: an fd for the network namespace of a socket
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)  # setns(2): os.setns arrives only in Python 3.12


class UnixDiagUnavailable(OSError):
    """The kernel does not answer unix_diag queries (module unix_diag not loaded or built)."""


class PeerGone(Exception):
    """The socket has no connected peer any more (the client closed its end)."""


def _request(inode: int) -> bytes:
    body = _REQUEST.pack(
        socket.AF_UNIX, 0, 0, _ALL_STATES, inode, UDIAG_SHOW_PEER, _NO_COOKIE, _NO_COOKIE
    )
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    return header + body


def parse_peer_inode(reply: bytes) -> int | None:
    """The UNIX_DIAG_PEER attribute of one netlink reply; None when the socket has no peer.

    Raises OSError carrying the errno of an NLMSG_ERROR reply.
    """
    length, kind, _, _, _ = _NLMSGHDR.unpack_from(reply)
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", reply, _NLMSGHDR.size)
        raise OSError(-code, os.strerror(-code))
    if kind != SOCK_DIAG_BY_FAMILY:
        raise ValueError(f"unexpected netlink message type {kind} from sock_diag")
    offset = _NLMSGHDR.size + _MESSAGE.size
    end = min(length, len(reply))
    while offset + _RTATTR.size <= end:
        attr_len, attr_type = _RTATTR.unpack_from(reply, offset)
        if attr_len < _RTATTR.size:
            break
        if attr_type == UNIX_DIAG_PEER and attr_len >= _RTATTR.size + 4:
            (peer,) = struct.unpack_from("=I", reply, offset + _RTATTR.size)
            return int(peer)
        offset += (attr_len + 3) & ~3
    return None


class ForeignNamespace(OSError):
    """The connection lives in a network namespace this process may not enter."""


def _diag_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)


def _diag_socket_in(netns_fd: int) -> socket.socket:
    """A sock_diag socket created inside the namespace ``netns_fd`` names.

    setns(2) moves only the calling thread, so a throw-away thread enters the namespace and
    creates the socket there; the socket keeps that namespace after the thread is gone.
    """
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def enter_and_create() -> None:
        if _libc.setns(netns_fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            failed.append(ForeignNamespace(code, f"setns: {os.strerror(code)}"))
            return
        try:
            made.append(_diag_socket())
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=enter_and_create, name="unix-diag-netns")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def _diag_socket_for(sock: socket.socket) -> socket.socket:
    """A sock_diag socket in the network namespace that ``sock`` belongs to."""
    try:
        netns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError as exc:
        raise ForeignNamespace(
            exc.errno, f"cannot open the caller's network namespace (SIOCGSKNS: {exc.strerror})"
        ) from None
    try:
        if os.fstat(netns_fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
            return _diag_socket()
        return _diag_socket_in(netns_fd)
    finally:
        os.close(netns_fd)


def peer_inode(sock: socket.socket) -> int:
    """Inode of the peer end of connected Unix socket ``sock`` (blocking; a few tens of us).

    Raises ForeignNamespace when the caller's namespace cannot be entered (no CAP_SYS_ADMIN).
    """
    own = os.fstat(sock.fileno()).st_ino
    try:
        with _diag_socket_for(sock) as nl:
            nl.send(_request(own))
            reply = nl.recv(8192)
        peer = parse_peer_inode(reply)
    except ForeignNamespace:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EPROTONOSUPPORT, errno.EOPNOTSUPP, errno.EAFNOSUPPORT):
            raise UnixDiagUnavailable(
                f"the kernel does not answer unix_diag queries ({exc.strerror}): "
                "load the unix_diag module (modprobe unix_diag)"
            ) from None
        raise
    if peer is None or peer == 0:
        raise PeerGone(f"socket inode {own} has no connected peer")
    return peer


def probe() -> None:
    """Raise UnixDiagUnavailable unless unix_diag works here: checked once at agent start."""
    a, b = socket.socketpair()
    with a, b:
        if peer_inode(a) != os.fstat(b.fileno()).st_ino:
            raise UnixDiagUnavailable("unix_diag reported the wrong peer for a socketpair")
