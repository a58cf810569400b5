"""Finding and configuring attestor plugins through Python entry points.

Built-ins are registered in Insignia's own pyproject.toml exactly as a third-party package
registers its plugins, so there is one loading path. Every problem (unknown name, a name two
packages claim, a plugin that fails to import, a bad config key) is a `ConfigError` whose one
line names the config key, which the daemons turn into exit code 2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Final, TypeVar

from insignia.attestors.interface import (
    NodeAttestorAgent,
    NodeAttestorPlugin,
    NodeAttestorServer,
    PluginConfig,
    ServerEnvironment,
    WorkloadAttestor,
    WorkloadAttestorPlugin,
)
from insignia.daemon.config.loading import ConfigError, validate_config
from insignia.selectors import InvalidSelector, Selector
from insignia.spiffeid import TrustDomain

WORKLOAD_GROUP: Final = "insignia.workload_attestors"
NODE_GROUP: Final = "insignia.node_attestors"

_KINDS: Final = {WORKLOAD_GROUP: "workload attestor", NODE_GROUP: "node attestor"}
P = TypeVar("P", WorkloadAttestorPlugin, NodeAttestorPlugin)
T = TypeVar("T")


@dataclass(frozen=True)
class ConfiguredWorkloadAttestor:
    """A started workload attestor with what the orchestrator needs to police it."""

    name: str
    attestor: WorkloadAttestor
    selector_types: frozenset[str]
    optional: bool = False


def installed_plugins(group: str) -> tuple[str, ...]:
    """Names registered in an entry-point group, sorted."""
    return tuple(sorted({ep.name for ep in entry_points(group=group)}))


def _entry_point(group: str, name: str, source: str | Path, key: str) -> EntryPoint:
    found = {ep.value: ep for ep in entry_points(group=group) if ep.name == name}
    kind = _KINDS[group]
    if not found:
        installed = ", ".join(installed_plugins(group)) or "none"
        raise ConfigError(source, key, f"unknown {kind} {name!r}; installed: {installed}")
    if len(found) > 1:
        # A package must not be able to silently replace a built-in attestor.
        raise ConfigError(
            source, key, f"{kind} {name!r} is registered by several packages: {sorted(found)}"
        )
    return next(iter(found.values()))


def load_plugin(group: str, name: str, expected: type[P], source: str | Path, key: str) -> P:
    """The plugin object an entry point names, checked to be of the `expected` kind."""
    ep = _entry_point(group, name, source, key)
    try:
        plugin = ep.load()
    except Exception as exc:
        raise ConfigError(source, key, f"plugin {ep.value} failed to import: {exc!r}") from exc
    if not isinstance(plugin, expected):
        raise ConfigError(
            source, key, f"entry point {ep.value} is not a {expected.__name__} (plugin bug)"
        )
    return plugin


def _config(
    model: type[PluginConfig], data: Mapping[str, Any], source: str | Path, key: str
) -> PluginConfig:
    try:
        return validate_config(source, dict(data), model)
    except ConfigError as exc:
        raise ConfigError(source, f"{key}.{exc.key}" if exc.key else key, exc.problem) from exc


def _start(factory: Callable[..., T], args: tuple[Any, ...], source: str | Path, key: str) -> T:
    """Run a plugin's constructor; its failure (a missing CA file, ...) is a config error."""
    try:
        return factory(*args)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(source, key, f"plugin failed to start: {exc}") from exc


def load_workload_attestors(
    sections: Mapping[str, Mapping[str, Any]],
    source: str | Path = "<config>",
    key_prefix: str = "workload_attestors",
) -> tuple[ConfiguredWorkloadAttestor, ...]:
    """Start every configured workload attestor; `optional = true` is read here, not by plugins."""
    started = []
    for name, section in sections.items():
        key = f"{key_prefix}.{name}"
        plugin = load_plugin(WORKLOAD_GROUP, name, WorkloadAttestorPlugin, source, key)
        data = dict(section)
        optional = data.pop("optional", False)
        if not isinstance(optional, bool):
            raise ConfigError(
                source, f"{key}.optional", f"expected true or false (got {optional!r})"
            )
        config = _config(plugin.config_model, data, source, key)
        attestor = _start(plugin.create, (config,), source, key)
        started.append(ConfiguredWorkloadAttestor(name, attestor, plugin.selector_types, optional))
    return tuple(started)


def load_node_attestor_agent(
    name: str,
    section: Mapping[str, Any],
    trust_domain: TrustDomain,
    source: str | Path = "<config>",
    key_prefix: str = "node_attestor",
) -> NodeAttestorAgent:
    """The agent half of node attestor `name`, configured from `section`."""
    key = f"{key_prefix}.{name}"
    plugin = load_plugin(NODE_GROUP, name, NodeAttestorPlugin, source, key)
    config = _config(plugin.agent_config, section, source, key)
    return _start(plugin.create_agent, (config, trust_domain), source, key)


def load_node_attestor_servers(
    sections: Mapping[str, Mapping[str, Any]],
    env: ServerEnvironment,
    source: str | Path = "<config>",
    key_prefix: str = "node_attestors",
) -> dict[str, NodeAttestorServer]:
    """The server halves of every configured node attestor, by plugin name."""
    servers: dict[str, NodeAttestorServer] = {}
    for name, section in sections.items():
        key = f"{key_prefix}.{name}"
        plugin = load_plugin(NODE_GROUP, name, NodeAttestorPlugin, source, key)
        config = _config(plugin.server_config, section, source, key)
        servers[name] = _start(plugin.create_server, (config, env), source, key)
    return servers


#: Selector types the server itself understands: `token generate --spiffe-id` parents an entry
#: to the agent with `spiffe_id:<agent ID>` (as SPIRE does).
_SERVER_SELECTOR_KEYS: Final[Mapping[str, frozenset[str] | None]] = {"spiffe_id": frozenset()}


def installed_selector_keys() -> dict[str, frozenset[str] | None]:
    """Selector type -> the keys its values start with (None: the plugin did not declare
    them), for every installed workload and node attestor. A plugin that fails to import
    contributes nothing (`run` reports it when configured)."""
    known: dict[str, frozenset[str] | None] = dict(_SERVER_SELECTOR_KEYS)
    for group in (WORKLOAD_GROUP, NODE_GROUP):
        for ep in entry_points(group=group):
            try:
                plugin = ep.load()
            except Exception:  # noqa: S112 - a broken plugin must not break the CLI
                continue
            if not isinstance(plugin, WorkloadAttestorPlugin | NodeAttestorPlugin):
                continue
            declared = plugin.selector_keys
            types = (
                plugin.selector_types
                if isinstance(plugin, WorkloadAttestorPlugin)
                else frozenset(declared or ())
            )
            for kind in types:
                keys = None if declared is None else declared.get(kind, frozenset())
                if keys is None or known.get(kind, frozenset()) is None:
                    known[kind] = None  # someone leaves this type's keys open: accept any
                else:
                    known[kind] = (known.get(kind) or frozenset()) | keys
    return known


def check_entry_selector(text: str, known: Mapping[str, frozenset[str] | None]) -> Selector:
    """The selector `text`, if the installed attestors can ever emit it; else InvalidSelector
    listing what they understand (an entry with a typo in a selector silently never matches)."""
    selector = Selector.parse(text)
    listing = "; the installed attestors understand " + ", ".join(
        _describe(kind, keys) for kind, keys in sorted(known.items())
    )
    if selector.type not in known:
        raise InvalidSelector(text, f"unknown selector type {selector.type!r}{listing}")
    keys = known[selector.type]
    if not keys:  # undeclared, or a type with plain values (spiffe_id:<ID>)
        return selector
    key, sep, rest = selector.value.partition(":")
    if key not in keys:
        raise InvalidSelector(text, f"{selector.type} has no key {key!r}{listing}")
    if not sep or not rest:
        raise InvalidSelector(text, f"empty value for {selector.type}:{key}{listing}")
    return selector


def _describe(kind: str, keys: frozenset[str] | None) -> str:
    if keys is None:
        return f"{kind}:<any value>"
    if not keys:
        return f"{kind}:<value>"
    return f"{kind}:{{{'|'.join(sorted(keys))}}}:<value>"
