"""Who may do what on NATS: the roles, the nats-server authorization that grants them, and the
passwords generated for them.

Three users, one per role:

- `pacsor`, the pipeline: publishes events, schedules, objects and key-value entries, uses the
  JetStream API to create its streams and consumers, acknowledges; it cannot purge or delete
  the event stream nor delete one of its messages.
- `reader`, a person inspecting with the `nats` CLI: lists streams and consumers, reads
  messages (by sequence, by subject, or through an ephemeral consumer of its own) and watches
  live subjects; it publishes no event, acknowledges nothing, purges and deletes nothing,
  creates no durable consumer and takes no message from the pipeline's consumers.
- `report-provider`, an external report provider: sends its reports, reads the answers.

deploy/nats/authorization.conf is `authorization_conf()` with the passwords as nats-server
variables (a test keeps the file and this module in step); the embedded server of `pacsor up`
gets the same block with the passwords it generated.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pacsor.jetstream.subjects import (
    EVENTS_DESTRUCTION,
    PIPELINE_PUBLISHES,
    READ_ONLY_API,
    REPLIES,
    WEBPS_SUBJECTS,
)

PIPELINE_USER = "pacsor"
READER_USER = "reader"
PROVIDER_USER = "report-provider"
# A deployment's secrets folder (compose mounts each file as a Docker secret).
PASSWORDS_CONF = "nats-passwords.conf"
STORE_CONF = "nats-store.conf"


@dataclass(frozen=True)
class Role:
    user: str
    # The nats-server variable holding its password in deploy/nats/authorization.conf.
    password_variable: str
    publish_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...] = (">",)
    subscribe_deny: tuple[str, ...] = ()

    def permissions(self) -> dict[str, dict[str, list[str]]]:
        publish = {"allow": list(self.publish_allow)}
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        subscribe = {"allow": list(self.subscribe_allow)}
        if self.subscribe_deny:
            subscribe["deny"] = list(self.subscribe_deny)
        return {"publish": publish, "subscribe": subscribe}


ROLES: tuple[Role, ...] = (
    Role(
        PIPELINE_USER,
        "PACSOR_NATS_PASSWORD",
        publish_allow=PIPELINE_PUBLISHES,
        publish_deny=EVENTS_DESTRUCTION,
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


def authorization_conf(passwords: dict[str, str] | None = None) -> str:
    """The nats-server `authorization` block granting ROLES.

    With `passwords` (by user), they are written in; without, each is its role's variable.
    """
    lines = ["authorization {", "  users = ["]
    for role in ROLES:
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


def deployment_authorization_conf() -> str:
    """deploy/nats/authorization.conf: the roles, their passwords read from the secrets."""
    return (
        "# Who may do what on this nats-server: one user per role. Written from\n"
        "# pacsor.jetstream.nats_auth (a test keeps the two in step). The passwords are variables\n"
        f"# of secrets/{PASSWORDS_CONF}, which `pacsor setup` (or `pacsor nats-credentials`)\n"
        "# writes per site and compose mounts as a Docker secret: never in the repository.\n"
        f"include ./secrets/{PASSWORDS_CONF}\n" + authorization_conf()
    )


def password_variables(passwords: dict[str, str]) -> str:
    """The nats-server variables that deploy/nats/authorization.conf reads the passwords from."""
    return "".join(
        f"{role.password_variable}: {json.dumps(passwords[role.user])}\n" for role in ROLES
    )


def store_key_conf(key: str) -> str:
    """What goes into nats-server's `jetstream {}` block to encrypt the store; "" keeps it clear."""
    return f"cipher: chacha\nkey: {json.dumps(key)}\n" if key else ""


def password_file(folder: Path, user: str) -> Path:
    return folder / f"{user}.password"


def ensure_passwords(folder: Path, file_mode: int = 0o600) -> dict[str, str]:
    """The password of every role, one file each in `folder`, generated where missing.

    A file that exists is kept: credentials are made once and reused after a restart.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    passwords = {}
    for role in ROLES:
        path = password_file(folder, role.user)
        try:
            # O_EXCL: two starts at once cannot both write (and disagree on) the password.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(32) + "\n")
            os.chmod(path, file_mode)  # whatever the umask
        passwords[role.user] = path.read_text().strip()
        if not passwords[role.user]:
            raise ValueError(f"{path}: empty password file; remove it to have a new one made")
    return passwords


def new_store_key() -> str:
    return secrets.token_urlsafe(32)


def ensure_deployment_secrets(folder: Path, encrypt_store: bool = False) -> dict[str, str]:
    """The secrets of a nats-server run by compose, in `folder`, made where missing: a password
    file per role, the server's variables holding them (PASSWORDS_CONF) and its store
    encryption (STORE_CONF: a new key when `encrypt_store`, else empty).

    The files are readable by the containers' users (0644); `folder` itself is 0700, so on
    the host only its owner reaches them. An existing STORE_CONF is never changed: a store
    written with a key cannot be read without it.
    """
    passwords = ensure_passwords(folder, file_mode=0o644)
    os.chmod(folder, 0o700)
    _write(folder / PASSWORDS_CONF, password_variables(passwords))
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
