"""Who may do what on NATS: the roles, the nats-server authorization that grants them, and the
passwords generated for them.

One user per role:

- `pacsor`, the whole pipeline in one process (`pacsor up`) and the operator's commands:
  publishes events, schedules, objects and key-value entries, uses the JetStream API to create
  and update its streams and consumers, acknowledges; it cannot purge or delete the event
  stream nor delete one of its messages.
- one per component (`scp`, `uploader`, `poller`, ...), for a deployment that runs each as a
  service of its own: it publishes only the events its component declares (`Publishes`, next
  to the component in consumers/), writes only its own buckets, and runs its consumers. The
  SCP, which hostile traffic reaches, cannot forge a result; of the components, only the
  admin asks for a relaunch.
- `reader`, a person inspecting with the `nats` CLI: lists streams and consumers, reads
  messages (by sequence, by subject, or through an ephemeral consumer of its own) and watches
  live subjects; it publishes no event, acknowledges nothing, purges and deletes nothing,
  creates no durable consumer and takes no message from the pipeline's consumers.
- `report-provider`, an external report provider: sends its reports, reads the answers.

The components declare their grants; pacsor.components gathers the roles (`NATS_ROLES`), as
this layer knows no component. deploy/nats/authorization.conf is `authorization_conf` of them
with the passwords as nats-server variables (a test keeps the file and the roles in step); the
embedded server of `pacsor up` gets the same block with the passwords it generated.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pacsor.domain.events import Event
from pacsor.jetstream.subjects import (
    ALL_HOLDS,
    COMPONENT_API,
    EVENTS_DESTRUCTION,
    HELD_SCHEDULES,
    PIPELINE_PUBLISHES,
    QUIET_SCHEDULES,
    READ_ONLY_API,
    REPLIES,
    WEBPS_SUBJECTS,
    bucket_writes,
    events_filter,
    key_value_writes,
    stream_create_subjects,
    stream_update_subjects,
)
from pacsor.streams import stream_definitions

PIPELINE_USER = "pacsor"
READER_USER = "reader"
PROVIDER_USER = "report-provider"
# A deployment's secrets folder (compose mounts each file as a Docker secret).
PASSWORDS_CONF = "nats-passwords.conf"
STORE_CONF = "nats-store.conf"
# The three-node cluster (deploy/nats/cluster.conf): a node joins with the route password.
ROUTES_CONF = "nats-routes.conf"
ROUTE_PASSWORD = "route.password"
ROUTE_USER = "route"
CLUSTER_NODES = ("nats-1", "nats-2", "nats-3")
CLUSTER_PORT = 6222


@dataclass(frozen=True)
class Role:
    user: str
    # The nats-server variable holding its password in deploy/nats/authorization.conf.
    password_variable: str
    publish_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...] = (">",)
    subscribe_deny: tuple[str, ...] = ()
    # Whether it changes a stream whose definition changed (pacsor.jetstream.broker.apply_streams).
    updates_streams: bool = False

    def permissions(self) -> dict[str, dict[str, list[str]]]:
        publish = {"allow": list(self.publish_allow)}
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        subscribe = {"allow": list(self.subscribe_allow)}
        if self.subscribe_deny:
            subscribe["deny"] = list(self.subscribe_deny)
        return {"publish": publish, "subscribe": subscribe}


@dataclass(frozen=True)
class Publishes:
    """What a component writes to NATS besides reading and acknowledging: its role's grants.

    Declared once with the component (`Component.publishes`); the handler runner refuses an
    event a step did not declare, and nats-server refuses what the role does not grant.
    """

    events: tuple[type[Event], ...] = ()
    # Object-store buckets it puts objects into (and removes them from).
    buckets: tuple[str, ...] = ()
    key_values: tuple[str, ...] = ()
    quiet_timers: bool = False
    holds: bool = False
    # It answers requests (the report providers').
    replies: bool = False
    # It updates a stream whose definition changed (creating a missing one is every
    # component's: whichever starts first).
    manages_streams: bool = False


def component_role(name: str, publishes: Publishes) -> Role:
    streams = tuple(stream_definitions())
    allow: list[str] = [events_filter(kind) for kind in publishes.events]
    for bucket in publishes.buckets:
        allow += bucket_writes(bucket)
    allow += [key_value_writes(bucket) for bucket in publishes.key_values]
    if publishes.quiet_timers:
        allow += [QUIET_SCHEDULES, HELD_SCHEDULES]
    if publishes.holds:
        allow.append(ALL_HOLDS)
    if publishes.replies:
        allow.append(REPLIES)
    allow += [*COMPONENT_API, *stream_create_subjects(streams)]
    if publishes.manages_streams:
        allow += stream_update_subjects(streams)
    return Role(
        name,
        f"{name.upper().replace('-', '_')}_NATS_PASSWORD",
        publish_allow=tuple(dict.fromkeys(allow)),
        publish_deny=EVENTS_DESTRUCTION,
        # Reports pushed by providers go to one queue subscriber: only the hl7 component's.
        subscribe_deny=() if publishes.replies else (WEBPS_SUBJECTS,),
        updates_streams=publishes.manages_streams,
    )


SHARED_ROLES: tuple[Role, ...] = (
    Role(
        PIPELINE_USER,
        "PACSOR_NATS_PASSWORD",
        publish_allow=PIPELINE_PUBLISHES,
        publish_deny=EVENTS_DESTRUCTION,
        updates_streams=True,
    ),
    Role(
        READER_USER,
        "READER_NATS_PASSWORD",
        publish_allow=READ_ONLY_API,
        # Reports pushed by providers go to one queue subscriber: a reader must not take them.
        subscribe_deny=(WEBPS_SUBJECTS,),
    ),
    Role(
        PROVIDER_USER,
        "REPORT_PROVIDER_NATS_PASSWORD",
        publish_allow=(WEBPS_SUBJECTS,),
        subscribe_allow=(REPLIES,),
    ),
)


def role_of(roles: Sequence[Role], user: str) -> Role | None:
    return next((role for role in roles if role.user == user), None)


def may_update_streams(roles: Sequence[Role], user: str) -> bool:
    """Whether `user` may change a stream: a user of no role of ours (a server without
    authorization, or one the site configured itself) is left to the server to decide."""
    role = role_of(roles, user)
    return role is None or role.updates_streams


def authorization_conf(roles: Sequence[Role], passwords: dict[str, str] | None = None) -> str:
    """The nats-server `authorization` block granting `roles`.

    With `passwords` (by user), they are written in; without, each is its role's variable.
    """
    lines = ["authorization {", "  users = ["]
    for role in roles:
        password = json.dumps(passwords[role.user]) if passwords else f"${role.password_variable}"
        lines.append(f"    {{user: {json.dumps(role.user)}, password: {password}, permissions: {{")
        for direction, rules in role.permissions().items():
            lines.append(f"      {direction}: {{")
            for rule, subjects in rules.items():
                lines.append(f"        {rule}: {json.dumps(subjects)}")
            lines.append("      }")
        lines.append("    }}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def deployment_authorization_conf(roles: Sequence[Role]) -> str:
    """deploy/nats/authorization.conf: the roles, their passwords read from the secrets."""
    return (
        "# Who may do what on this nats-server: one user per role. Written from\n"
        "# pacsor.jetstream.nats_auth (a test keeps the two in step). The passwords are variables\n"
        f"# of secrets/{PASSWORDS_CONF}, which `pacsor setup` (or `pacsor nats-credentials`)\n"
        "# writes per site and compose mounts as a Docker secret: never in the repository.\n"
        f"include ./secrets/{PASSWORDS_CONF}\n" + authorization_conf(roles)
    )


def password_variables(roles: Sequence[Role], passwords: dict[str, str]) -> str:
    """The nats-server variables that deploy/nats/authorization.conf reads the passwords from."""
    return "".join(
        f"{role.password_variable}: {json.dumps(passwords[role.user])}\n" for role in roles
    )


def store_key_conf(key: str) -> str:
    """What goes into nats-server's `jetstream {}` block to encrypt the store; "" keeps it clear."""
    return f"cipher: chacha\nkey: {json.dumps(key)}\n" if key else ""


def password_file(folder: Path, user: str) -> Path:
    return folder / f"{user}.password"


def ensure_passwords(folder: Path, roles: Sequence[Role], file_mode: int = 0o600) -> dict[str, str]:
    """The password of every one of `roles`, one file each in `folder`, made where missing.

    A file that exists is kept: credentials are made once and reused after a restart.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {
        role.user: _ensure_password(password_file(folder, role.user), file_mode) for role in roles
    }


def _ensure_password(path: Path, file_mode: int) -> str:
    try:
        # O_EXCL: two starts at once cannot both write (and disagree on) the password.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
        os.chmod(path, file_mode)  # whatever the umask
    password = path.read_text().strip()
    if not password:
        raise ValueError(f"{path}: empty password file; remove it to have a new one made")
    return password


def routes_conf(password: str, nodes: Sequence[str] = CLUSTER_NODES) -> str:
    """What deploy/nats/cluster.conf includes in its `cluster {}` block: the password a node
    must give to join the cluster, and the routes to the others, which give it."""
    urls = [f"nats-route://{ROUTE_USER}:{password}@{node}:{CLUSTER_PORT}" for node in nodes]
    return (
        f"authorization {{ user: {json.dumps(ROUTE_USER)}, password: {json.dumps(password)} }}\n"
        f"routes: {json.dumps(urls)}\n"
    )


def new_store_key() -> str:
    return secrets.token_urlsafe(32)


def ensure_deployment_secrets(
    folder: Path, roles: Sequence[Role], encrypt_store: bool = False
) -> dict[str, str]:
    """The secrets of a nats-server run by compose, in `folder`, made where missing: a password
    file per role, the server's variables holding them (PASSWORDS_CONF), its store
    encryption (STORE_CONF: a new key when `encrypt_store`, else empty), and the routes of the
    three-node cluster with the password its nodes share (ROUTES_CONF).

    The files are readable by the containers' users (0644); `folder` itself is 0700, so on
    the host only its owner reaches them. An existing STORE_CONF is never changed: a store
    written with a key cannot be read without it.
    """
    passwords = ensure_passwords(folder, roles, file_mode=0o644)
    os.chmod(folder, 0o700)
    _write(folder / PASSWORDS_CONF, password_variables(roles, passwords))
    _write(folder / ROUTES_CONF, routes_conf(_ensure_password(folder / ROUTE_PASSWORD, 0o644)))
    store = folder / STORE_CONF
    if not store.exists():
        _write(store, store_key_conf(new_store_key() if encrypt_store else ""))
    return passwords


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(partial, 0o644)
    partial.replace(path)
