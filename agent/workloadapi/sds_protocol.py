"""The xDS bookkeeping of one SDS stream: versions, nonces, ACKs and NACKs.

Pure (no gRPC, no cache): the handler feeds every request and every rebuilt set of secrets
in, and sends what comes out. The rules, from the xDS protocol:

- a request whose `response_nonce` is not the last one sent is stale and ignored;
- a request with `error_detail` is a NACK: reported once, and the same secrets are not sent
  again (so a secret Envoy rejects cannot make the stream loop), only new ones;
- a response goes out when the requested names change or the secrets for them do.

State of the world (`StreamSecrets`) resends every requested secret each time; incremental
(`DeltaSecrets`) sends only the secrets whose version moved, and names the ones gone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from insignia.agent.workloadapi.sds_secrets import SECRET_TYPE_URL


class WrongType(ValueError):
    """The request asks for a resource type other than SDS secrets."""


def check_type(type_url: str) -> None:
    """WrongType unless `type_url` is empty or the Secret type (Envoy always sets it)."""
    if type_url and type_url != SECRET_TYPE_URL:
        raise WrongType(f"this server serves only {SECRET_TYPE_URL}, not {type_url!r}")


def _packed(secret: secret_pb2.Secret) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(secret)
    return packed


def secret_version(secret: secret_pb2.Secret) -> str:
    """A version naming the secret's content, the same on every stream."""
    return hashlib.sha256(secret.SerializeToString(deterministic=True)).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Heard:
    """What a request meant: `stale` (ignored), or the NACK's error detail (None: not one)."""

    stale: bool
    nack: str | None = None


@dataclass
class SotwStream:
    """One `StreamSecrets` stream. `names` is None until the first request."""

    names: tuple[str, ...] | None = None
    version: int = 0
    nonce: str = ""
    _sent: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    @property
    def requested(self) -> tuple[str, ...] | None:
        """The names to resolve (() for all), None before the first request."""
        return self.names

    def hear(self, request: discovery_pb2.DiscoveryRequest) -> Heard:
        check_type(request.type_url)
        if self.nonce and request.response_nonce != self.nonce:
            return Heard(stale=True)
        self.names = tuple(request.resource_names)
        if request.HasField("error_detail"):
            return Heard(stale=False, nack=request.error_detail.message or "(no detail)")
        return Heard(stale=False)

    def respond(
        self, secrets: Sequence[secret_pb2.Secret]
    ) -> discovery_pb2.DiscoveryResponse | None:
        """The response to send for the current names and `secrets`; None when the client
        already has exactly these (or has asked for nothing yet)."""
        if self.names is None:
            return None
        sent = (self.names, tuple(secret_version(s) for s in secrets))
        if sent == self._sent:
            return None
        self._sent = sent
        self.version += 1
        self.nonce = str(self.version)
        return discovery_pb2.DiscoveryResponse(
            version_info=str(self.version),
            nonce=self.nonce,
            type_url=SECRET_TYPE_URL,
            resources=[_packed(s) for s in secrets],
        )


@dataclass
class DeltaStream:
    """One `DeltaSecrets` stream: the subscribed names and the version the client holds of
    each secret. Subscribing to nothing (or to "*") at first is a wildcard."""

    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    started: bool = False
    nonce: str = ""
    _counter: int = 0
    _held: dict[str, str] = field(default_factory=dict)
    _pending_reply: bool = False

    def hear(self, request: discovery_pb2.DeltaDiscoveryRequest) -> Heard:
        check_type(request.type_url)
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if not self.started:
            self.started = True
            self.wildcard = not subscribe or "*" in subscribe
            self._held.update(request.initial_resource_versions)
        elif "*" in subscribe:
            self.wildcard = True
        if "*" in unsubscribe:
            self.wildcard = False
        self.names |= subscribe - {"*"}
        self.names -= unsubscribe
        for name in unsubscribe:
            self._held.pop(name, None)
        if subscribe - {"*"}:
            self._pending_reply = True  # a new name is answered, even when unknown
        stale = bool(request.response_nonce) and request.response_nonce != self.nonce
        if not stale and request.HasField("error_detail"):
            return Heard(stale=False, nack=request.error_detail.message or "(no detail)")
        return Heard(stale=stale)

    @property
    def requested(self) -> tuple[str, ...] | None:
        """The names to resolve: () for the wildcard, else the subscribed ones; None before
        the first request or when subscribed to nothing."""
        if not self.started or not (self.wildcard or self.names):
            return None
        return () if self.wildcard else tuple(sorted(self.names))

    def respond(
        self, secrets: Sequence[secret_pb2.Secret]
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        if not self.started:
            return None
        current = {s.name: (secret_version(s), s) for s in secrets}
        changed = [
            discovery_pb2.Resource(name=name, version=version, resource=_packed(secret))
            for name, (version, secret) in current.items()
            if self._held.get(name) != version
        ]
        removed = sorted(name for name in self._held if name not in current)
        if not changed and not removed and not self._pending_reply:
            return None
        self._pending_reply = False
        for name in removed:
            del self._held[name]
        for resource in changed:
            self._held[resource.name] = resource.version
        self._counter += 1
        self.nonce = str(self._counter)
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=str(self._counter),
            nonce=self.nonce,
            type_url=SECRET_TYPE_URL,
            resources=changed,
            removed_resources=removed,
        )
