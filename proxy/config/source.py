"""The YAML source: values with the line of every key path, and secret references.

Secrets are written as ``${env:NAME}`` or ``${file:/path}`` and resolved here.
A resolved value is a :class:`~proxy.config.values.Secret`: a ``str`` whose
``repr`` is masked, so that it cannot leak through a log line or ``check
--explain``. An error about a secret names the key and the variable or file,
never the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from proxy.config.problems import Problem
from proxy.config.values import Secret

_SECRET_REF = re.compile(r"\$\{(env|file):([^}]*)\}")
#: any other ``${...}``: a typo or an unsupported store (``${vault:x}``, ``${ENV:X}``)
_OTHER_REF = re.compile(r"\$\{([^}:]*)(:?)[^}]*\}")
#: keys whose values are secrets even when written literally. A client id is masked
#: too (issue 14): with the secret, it is the credential.
SECRET_KEYS = {
    "client_secret", "password", "api_key", "refresh_token", "value", "inbound_token",
    "encryption_key", "clientSecret", "private_key", "client_id", "clientId",
}  # fmt: skip


def _load(text: str, lines: dict[str, int], problems: list[Problem]) -> object:
    """The document as plain values; ``lines`` gets the line of every key path."""
    ctor = yaml.SafeLoader("")

    def convert(node: yaml.Node, path: str) -> object:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, object] = {}
            for key_node, value_node in node.value:
                key = str(ctor.construct_object(key_node, deep=True))
                sub = f"{path}.{key}" if path else key
                lines[sub] = key_node.start_mark.line + 1
                if key in out:
                    problems.append(Problem(sub, "duplicate key", lines[sub]))
                out[key] = convert(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [convert(v, f"{path}[{i}]") for i, v in enumerate(node.value)]
        return ctor.construct_object(node, deep=True)

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        # Constructing values can fail too (an unknown tag, `=` alone).
        return None if node is None else convert(node, "")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.append(Problem("", f"YAML syntax error: {reason}", line))
        return None


class Source:
    """One YAML document: its values, the lines of its key paths, and its problems."""

    def __init__(self, text: str, environ: Mapping[str, str]) -> None:
        self.lines: dict[str, int] = {}
        self.problems: list[Problem] = []
        self.environ = environ
        #: every secret file read
        self.files: list[str] = []
        #: key paths (``routes.api.auth.client_secret``) allowed an empty secret
        self.allow_empty: set[str] = set()
        self.root = _load(text, self.lines, self.problems)

    def error(self, path: str, message: str) -> None:
        """A problem at ``path``, on its line or on the nearest parent's."""
        line = self.lines.get(path)
        probe = path
        while line is None and probe:
            probe = probe.rpartition(".")[0]
            line = self.lines.get(probe)
        self.problems.append(Problem(path, message, line))

    def resolve(self, value: object, path: str, secret: bool = False) -> object:
        """Resolve ``${env:}``/``${file:}`` in strings, recursively.

        A value resolved once (a preset's parameter) is not resolved again: it may
        be a secret holding ``${``, and it stays a :class:`Secret`."""
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{path}.{k}", k in SECRET_KEYS) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, Secret) or not isinstance(value, str):
            return value
        found = False

        def sub(m: re.Match[str]) -> str:
            nonlocal found
            found = True
            return self._secret(m.group(1), m.group(2).strip(), path)

        out = _SECRET_REF.sub(sub, value)
        # Scan what was written, never a resolved value: that could be a secret.
        for other in _OTHER_REF.finditer(_SECRET_REF.sub("", value)):
            scheme = other.group(1) + other.group(2)
            self.error(
                path,
                f"unknown secret reference ${{{scheme}...}}: only ${{env:NAME}} and "
                "${file:/path} are read (names are case-sensitive)",
            )
        return Secret(out) if (found or secret) else out

    def _secret(self, kind: str, ref: str, path: str) -> str:
        if kind == "env":
            if ref not in self.environ:
                self.error(path, f"environment variable {ref} is not set")
                return ""
            got = self.environ[ref]
            where = f"environment variable {ref}"
        else:
            self.files.append(ref)
            try:
                with open(ref, encoding="utf-8") as fh:
                    got = fh.read().rstrip("\r\n")
            except OSError as exc:
                self.error(path, f"cannot read secret file {ref}: {exc.strerror or exc}")
                return ""
            where = f"secret file {ref}"
        if not got and path not in self.allow_empty:
            self.error(path, f"{where} is empty (list {path} in allow_empty_secrets if meant)")
        return got
