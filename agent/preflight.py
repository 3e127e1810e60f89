"""What the agent needs at start beyond a valid config: the files it names exist, the user it runs as can
read them, the keys parse, and it can write its data dir and its socket's folder.

``edgefleet agent validate-config --as-user edgefleet`` runs these checks for the packaged unit's user
(postinst relies on it before it starts the service); without a user, for whoever runs the command.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.config import AgentConfig
from edgefleet.protocol.errors import ProtocolError
from edgefleet.protocol.signing import load_public_key

__all__ = ["Account", "startup_problems"]

# Made by systemd for the packaged unit (StateDirectory=, RuntimeDirectory=) before the agent starts.
UNIT_DIRECTORIES = (Path("/var/lib/edgefleet"), Path("/run/edgefleet"))


@dataclass(frozen=True)
class Account:
    """Whose permissions the checks apply: a user id and all its groups."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def named(cls, name: str) -> Account:
        """Raise KeyError when there is no such user."""
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, frozenset(os.getgrouplist(name, entry.pw_gid)))

    @classmethod
    def current(cls) -> Account:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, frozenset({os.getegid(), *os.getgroups()}))

    def may(self, path: Path, want: int) -> bool:
        """Whether this account has ``want`` (a mix of os.R_OK, os.W_OK, os.X_OK) on ``path`` by its mode bits."""
        if self.uid == 0:
            return True
        info = path.stat()
        if info.st_uid == self.uid:
            shift = 6
        elif info.st_gid in self.gids:
            shift = 3
        else:
            shift = 0
        granted = (info.st_mode >> shift) & 0o7
        return granted & want == want

    def reaches(self, path: Path) -> str | None:
        """None when every folder above ``path`` lets this account through, else the first one that does not."""
        for folder in reversed(path.absolute().parents):
            if not self.may(folder, os.X_OK):
                return str(folder)
        return None


def _group_names(gids: frozenset[int]) -> str:
    names = []
    for gid in sorted(gids):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return ", ".join(names)


def _readable(path: Path, what: str, account: Account) -> str | None:
    if not path.exists():
        return f"{what} {path}: no such file"
    if (blocked := account.reaches(path)) is not None:
        return f"{what} {path}: {account.name} cannot enter {blocked}"
    if not path.is_file():
        return f"{what} {path}: not a file"
    if not account.may(path, os.R_OK):
        info = path.stat()
        return (
            f"{what} {path}: not readable by {account.name} (groups {_group_names(account.gids)}): owner uid "
            f"{info.st_uid}, group gid {info.st_gid}, mode {stat.filemode(info.st_mode)}"
        )
    return None


def _writable_dir(path: Path, what: str, account: Account) -> str | None:
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    if existing != path and any(path == d or d in path.parents for d in UNIT_DIRECTORIES):
        return None  # systemd makes it, for the unit's user, before the agent starts
    if (blocked := account.reaches(existing)) is not None:
        return f"{what} {path}: {account.name} cannot enter {blocked}"
    if not existing.is_dir():
        return f"{what} {path}: {existing} is not a folder"
    if not account.may(existing, os.W_OK | os.X_OK):
        made = "" if existing == path else f" (it does not exist, and {existing} is where it would be made)"
        return f"{what} {path}: {account.name} cannot write {existing}{made}"
    return None


def startup_problems(config: AgentConfig, account: Account) -> list[str]:
    """Every problem the agent would meet at start as ``account``, each a sentence naming the file."""
    problems = []
    for kind, paths in (("trusted key", config.trusted_keys), ("command key", config.command_keys)):
        for path in paths:
            if (problem := _readable(path, kind, account)) is not None:
                problems.append(problem)
                continue
            try:
                load_public_key(path.read_bytes(), source=str(path))
            except (ProtocolError, ValueError, OSError) as exc:
                problems.append(f"{kind} {path}: {getattr(exc, 'reason', exc)}")
    files = {
        "broker password_file": config.broker.password_file,
        "broker ca_file": config.broker.ca_file,
        "fetch http_ca_file": config.fetch.http_ca_file,
        "fetch http_token_file": config.fetch.http_token_file,
    }
    for what, named in files.items():
        if named is not None and (problem := _readable(named, what, account)) is not None:
            problems.append(problem)
    password = config.broker.password_file
    readable = password is not None and password.is_file() and os.access(password, os.R_OK)
    if readable and password is not None and not password.read_text(errors="replace").strip():
        problems.append(f"broker password_file {password}: empty")
    for what, folder in (("data_dir", config.data_dir), ("api socket folder", config.socket_path.parent)):
        if (problem := _writable_dir(folder, what, account)) is not None:
            problems.append(problem)
    return problems
