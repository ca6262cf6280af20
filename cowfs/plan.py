"""Plans: a JSON list of file operations an agent wants staged, and their rules.

A plan is ``{"version": 1, "ops": [...]}`` (``plan.schema.json`` is its
published JSON Schema, generated from ``OPS`` below and checked against it by a
test). ``parse`` checks the shape and normalises every path; ``check`` then
walks the ops in order against a simulated view of the tree, so an op may use
what an earlier one made, and returns each op with its paths resolved. Nothing
here writes anything: ``cowfs.planrun`` applies the checked ops inside a run.

Semantics (also in roscoe-plan(5)):

- Paths are relative to the root, ``/``-separated; ``.`` and empty components
  are dropped; ``..``, absolute paths, NUL and the root itself are refused.
- Symlinks on the way to the last component are followed when they stay
  inside the root, refused when they leave it; the last component is never
  followed (an op on a symlink acts on the link itself).
- ``mkdir`` makes the directory and its missing parents (``mkdir -p``); an
  existing directory is fine. Other destinations need their parent to exist.
- ``move`` moves a file, symlink or directory tree to exactly ``to``;
  ``rename`` is a move that keeps the parent directory. ``copy`` copies
  (``cp -a``: modes, mtimes, owners as root, symlinks as links).
  ``delete`` removes a file, symlink or a whole directory tree. ``write``
  makes a file of UTF-8 text, mode ``0644`` (or ``mode``; an overwritten
  file keeps its mode).
- A destination that exists is an error unless ``"overwrite": true``; then
  whatever is there (a whole directory too) is replaced.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple

from cowfs.entry import DIR, FILE, SYMLINK, kind_of
from cowfs.errors import PlanError

VERSION = 1
NAME_MAX = 255
MAX_SYMLINK_HOPS = 40

# op -> (required keys, optional keys); every key's JSON type is in KEY_TYPES.
OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mkdir": (("path",), ()),
    "move": (("from", "to"), ("overwrite",)),
    "copy": (("from", "to"), ("overwrite",)),
    "rename": (("from", "to"), ("overwrite",)),
    "delete": (("path",), ()),
    "write": (("path", "content"), ("overwrite", "mode")),
}
PATH_KEYS = ("path", "from", "to")
MODE_PATTERN = "^0?[0-7]{3}$"
KEY_TYPES: dict[str, dict[str, object]] = {
    "path": {"$ref": "#/$defs/path"},
    "from": {"$ref": "#/$defs/path"},
    "to": {"$ref": "#/$defs/path"},
    "content": {"type": "string"},
    "overwrite": {"type": "boolean"},
    "mode": {"type": "string", "pattern": MODE_PATTERN},
}


def _fail(reason: str, index: int | None = None, op: str | None = None, paths: list[str] | None = None) -> PlanError:
    where = "" if index is None else f" ops[{index}]" + (f" ({op})" if op else "")
    return PlanError(where=where, reason=reason, index=index, op=op, paths=paths or [])


def schema() -> dict[str, object]:
    """The plan's JSON Schema (draft 2020-12), built from ``OPS``."""
    defs: dict[str, object] = {
        "path": {
            "type": "string", "minLength": 1,
            "description": "relative to the root, '/'-separated; no '..', not absolute, no NUL",
        },
    }
    for name, (required, optional) in OPS.items():
        props: dict[str, object] = {"op": {"const": name}}
        props.update({key: KEY_TYPES[key] for key in required + optional})
        defs[name] = {
            "type": "object", "required": ["op", *required],
            "properties": props, "additionalProperties": False,
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "roscoe plan",
        "description": "File operations staged in order into a roscoe transaction (roscoe tx plan).",
        "type": "object",
        "required": ["version", "ops"],
        "properties": {
            "version": {"const": VERSION},
            "ops": {"type": "array", "items": {"oneOf": [{"$ref": f"#/$defs/{n}"} for n in OPS]}},
        },
        "additionalProperties": False,
        "$defs": defs,
    }


def schema_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "plan.schema.json")


def schema_text() -> str:
    """The published schema, as shipped with the package."""
    with open(schema_path(), encoding="utf-8") as f:
        return f.read()


class Op(namedtuple("_Op", "index op path src dst content overwrite mode")):
    """One op of a plan, its paths normalised (``path`` for mkdir, delete and
    write; ``src`` and ``dst`` for move, copy and rename)."""

    __slots__ = ()
    index: int
    op: str
    path: str | None
    src: str | None
    dst: str | None
    content: str | None
    overwrite: bool
    mode: int | None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"op": self.op}
        if self.path is not None:
            out["path"] = self.path
        if self.src is not None:
            out["from"], out["to"] = self.src, self.dst
        if self.content is not None:
            out["content"] = self.content
        if self.overwrite:
            out["overwrite"] = True
        if self.mode is not None:
            out["mode"] = format(self.mode, "04o")
        return out


class Plan(namedtuple("_Plan", "version ops")):
    """A parsed plan: its ops in order."""

    __slots__ = ()
    version: int
    ops: tuple[Op, ...]

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "ops": [o.to_json() for o in self.ops]}

    def dumps(self) -> str:
        # ASCII: lone surrogates (non-UTF-8 names) survive as \udcXX escapes.
        return json.dumps(self.to_json(), ensure_ascii=True)


def load(data: bytes | str) -> Plan:
    """Parse a plan from its JSON text."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text)
    except UnicodeDecodeError as e:
        raise _fail(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:
        raise _fail(f"not valid JSON: {e}") from None
    return parse(obj)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse(obj: object) -> Plan:
    """Check ``obj`` against the schema and normalise its paths."""
    if not isinstance(obj, dict):
        raise _fail(f"must be a JSON object, not {_type_name(obj)}")
    extra = sorted(set(obj) - {"version", "ops"})
    if extra:
        raise _fail(f"unknown key {extra[0]!r} (a plan has only 'version' and 'ops')")
    for key in ("version", "ops"):
        if key not in obj:
            raise _fail(f"missing key {key!r}")
    version = obj["version"]
    if isinstance(version, bool) or version != VERSION:
        raise _fail(f"version {json.dumps(version)} is not supported (expected {VERSION})")
    raw_ops = obj["ops"]
    if not isinstance(raw_ops, list):
        raise _fail(f"'ops' must be an array, not {_type_name(raw_ops)}")
    return Plan(VERSION, tuple(_parse_op(i, raw) for i, raw in enumerate(raw_ops)))


def _parse_op(index: int, raw: object) -> Op:
    if not isinstance(raw, dict):
        raise _fail(f"must be an object, not {_type_name(raw)}", index)
    name = raw.get("op")
    if not isinstance(name, str) or name not in OPS:
        shown = json.dumps(name) if "op" in raw else "missing"
        raise _fail(f"'op' is {shown}; expected one of {', '.join(OPS)}", index)
    required, optional = OPS[name]
    for key in sorted(raw):
        if key != "op" and key not in required and key not in optional:
            raise _fail(f"unknown key {key!r} (a {name} op takes {', '.join(required + optional)})", index, name)
    for key in required:
        if key not in raw:
            raise _fail(f"missing key {key!r}", index, name)
    values: dict[str, object] = {}
    for key in required + optional:
        if key not in raw:
            continue
        value = raw[key]
        if key in PATH_KEYS:
            values[key] = normalise(value, index, name, key)
        elif key == "overwrite":
            if not isinstance(value, bool):
                raise _fail(f"'overwrite' must be true or false, not {_type_name(value)}", index, name)
            values[key] = value
        elif key == "content":
            if not isinstance(value, str):
                raise _fail(f"'content' must be a string, not {_type_name(value)}", index, name)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _fail("'content' is not valid Unicode text (a lone surrogate)", index, name) from None
            values[key] = value
        elif key == "mode":
            values[key] = _mode(value, index, name)
    return Op(
        index, name, values.get("path"), values.get("from"), values.get("to"), values.get("content"),
        bool(values.get("overwrite", False)), values.get("mode"),
    )


def _mode(value: object, index: int, name: str) -> int:
    digits = value if isinstance(value, str) else ""
    ok = 3 <= len(digits) <= 4 and all(c in "01234567" for c in digits) and (len(digits) == 3 or digits[0] == "0")
    if not ok:
        raise _fail(f"'mode' must be octal permission bits as a string such as \"0644\", not {json.dumps(value)}", index, name)
    return int(digits, 8)


def normalise(value: object, index: int, name: str, key: str) -> str:
    """A plan path made canonical: '/'-separated, no '.', no empty components."""
    if not isinstance(value, str):
        raise _fail(f"{key!r} must be a string, not {_type_name(value)}", index, name)
    if not value:
        raise _fail(f"{key!r} is empty", index, name)
    shown = json.dumps(value)
    if "\0" in value:
        raise _fail(f"{key!r} {shown} contains a NUL character", index, name)
    if value.startswith("/"):
        raise _fail(f"{key!r} {shown} is absolute; paths are relative to the root", index, name)
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _fail(f"{key!r} {shown} has a '..' component; name the path from the root", index, name)
    if not parts:
        raise _fail(f"{key!r} {shown} names the root itself", index, name)
    for part in parts:
        try:
            size = len(os.fsencode(part))
        except UnicodeEncodeError:
            raise _fail(f"{key!r} {shown} is not a valid file name (a lone surrogate)", index, name) from None
        if size > NAME_MAX:
            raise _fail(f"{key!r} has a component longer than {NAME_MAX} bytes", index, name)
    return "/".join(parts)


# -- the simulated view --------------------------------------------------------


class _Node:
    """A path in the simulated view. ``real`` is where its state (children,
    symlink target) can still be read in the tree: None once the plan made it;
    a directory's ``kids`` are loaded from ``real`` on first use."""

    __slots__ = ("kind", "real", "kids", "target")

    def __init__(self, kind: str, real: str | None = None, target: str | None = None) -> None:
        self.kind = kind
        self.real = real
        self.target = target
        self.kids: dict[str, _Node] | None = {} if kind == DIR and real is None else None

    def children(self) -> dict[str, _Node]:
        if self.kids is None:
            kids: dict[str, _Node] = {}
            if self.kind == DIR and self.real is not None:
                with os.scandir(self.real) as it:
                    for d in it:
                        kids[d.name] = _Node(kind_of(d.stat(follow_symlinks=False).st_mode), d.path)
            self.kids = kids
        return self.kids

    def link_target(self) -> str:
        if self.target is None:
            assert self.real is not None
            self.target = os.readlink(self.real)
        return self.target

    def clone(self) -> _Node:
        new = _Node(self.kind, self.real, self.target)
        if self.kind == DIR and self.kids is not None:
            new.kids = {name: kid.clone() for name, kid in self.kids.items()}
        return new


class Step(namedtuple("_Step", "op src dst make replace")):
    """One checked op: paths resolved to real paths relative to the root.

    ``make`` lists the directories a mkdir creates (parents first);
    ``replace`` says the destination exists and is replaced."""

    __slots__ = ()
    op: Op
    src: str | None
    dst: str | None
    make: tuple[str, ...]
    replace: bool


class _Refused(Exception):
    """One op's reason to fail, before the index is attached."""


class _Hidden(_Refused):
    """An op's path leads to a hidden path: said as it is, never wrapped."""


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


class View:
    """The tree under ``root`` as the ops so far would leave it. A path at or
    under one of ``hidden`` (root-relative, cowfs.hide) is refused before
    anything there is read: the run cannot see it."""

    def __init__(self, root: str, hidden: tuple[str, ...] = ()) -> None:
        self.root = os.path.abspath(root)
        self.top = _Node(DIR, self.root)
        self.hidden = hidden

    def _visible(self, real: str, named: str) -> None:
        for hidden in self.hidden:
            if _under(real, hidden):
                raise _Hidden(f"{named} is hidden from this run ({hidden})")

    def _holds_no_hidden(self, real: str, named: str) -> None:
        for hidden in self.hidden:
            if _under(hidden, real):
                raise _Hidden(f"{named} holds {hidden}, which is hidden from this run")

    def _resolve_dir(
        self, parts: list[str], *, create: list[str] | None = None, named: str | None = None,
    ) -> tuple[list[str], _Node]:
        """Walk ``parts`` from the root following symlinks that stay inside it;
        each must be a directory. With ``create``, missing ones are made (and
        their paths appended to it); else a missing one is an error. A hidden
        one is refused as ``named`` (the op's path)."""
        canon: list[str] = []
        nodes = [self.top]
        todo = list(parts)
        hops = 0
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":  # only ever from a symlink's target
                if not canon:
                    raise _Refused("goes through a symlink that leaves the root")
                canon.pop()
                nodes.pop()
                continue
            here = "/".join(canon + [name])
            self._visible(here, named or here)
            kids = nodes[-1].children()
            node = kids.get(name)
            if node is None:
                if create is None:
                    raise _Refused(f"directory {here} does not exist")
                node = kids[name] = _Node(DIR)
                create.append(here)
            elif node.kind == SYMLINK:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise _Refused(f"too many levels of symlinks at {here}")
                target = node.link_target()
                if target.startswith("/"):
                    if not _under(target, self.root):
                        raise _Refused(f"goes through symlink {here}, which leaves the root (-> {target})")
                    canon, nodes = [], [self.top]
                    target = target[len(self.root):]
                todo[:0] = target.split("/")
                continue
            elif node.kind != DIR:
                raise _Refused(f"{here} is not a directory")
            canon.append(name)
            nodes.append(node)
        return canon, nodes[-1]

    def _leaf(self, rel: str) -> tuple[str, _Node, str, _Node | None]:
        """(real path, parent node, name, node or None) of ``rel``, its last
        component not followed."""
        parts = rel.split("/")
        canon, parent = self._resolve_dir(parts[:-1], named=rel)
        name = parts[-1]
        real = "/".join(canon + [name])
        self._visible(real, rel)
        return real, parent, name, parent.children().get(name)

    def _source(self, rel: str) -> tuple[str, _Node, str, _Node]:
        real, parent, name, node = self._leaf(rel)
        if node is None:
            raise _Refused(f"{rel} does not exist")
        return real, parent, name, node

    def _destination(self, rel: str, overwrite: bool) -> tuple[str, _Node, str, bool]:
        try:
            real, parent, name, node = self._leaf(rel)
        except _Hidden:
            raise
        except _Refused as e:
            raise _Refused(f"cannot make {rel}: {e}") from None
        if node is not None and not overwrite:
            raise _Refused(f'{rel} exists (add "overwrite": true to replace it)')
        return real, parent, name, node is not None

    def apply(self, op: Op) -> Step:
        """Check ``op`` against the view, then change the view as it would."""
        if op.op == "mkdir":
            made: list[str] = []
            self._resolve_dir(op.path.split("/"), create=made, named=op.path)
            return Step(op, None, op.path, tuple(made), False)
        if op.op == "delete":
            real, parent, name, _ = self._source(op.path)
            self._holds_no_hidden(real, op.path)
            del parent.children()[name]
            return Step(op, real, None, (), False)
        if op.op == "write":
            real, parent, name, exists = self._destination(op.path, op.overwrite)
            if exists:
                self._holds_no_hidden(real, op.path)
            parent.children()[name] = _Node(FILE)
            return Step(op, None, real, (), exists)
        # move, rename, copy
        if op.op == "rename" and op.src.rpartition("/")[0] != op.dst.rpartition("/")[0]:
            raise _Refused("rename keeps the parent directory (use move to move elsewhere)")
        src, src_parent, src_name, node = self._source(op.src)
        self._holds_no_hidden(src, op.src)
        if op.op == "copy" and node.kind not in (FILE, DIR, SYMLINK):
            raise _Refused(f"{op.src} is a {node.kind}: only files, directories and symlinks are copied")
        dst, dst_parent, dst_name, exists = self._destination(op.dst, op.overwrite)
        if exists:
            self._holds_no_hidden(dst, op.dst)
        if dst == src:
            raise _Refused(f"from and to are the same path ({src})")
        if node.kind == DIR and _under(dst, src):
            raise _Refused(f"cannot {op.op} directory {op.src} into itself")
        if _under(src, dst):
            raise _Refused(f"{op.dst} contains {op.src}, which cannot replace its own parent")
        if op.op == "copy":
            dst_parent.children()[dst_name] = node.clone()
        else:
            del src_parent.children()[src_name]
            dst_parent.children()[dst_name] = node
        return Step(op, src, dst, (), exists)


def op_paths(op: Op) -> list[str]:
    """The paths ``op`` names (what a failure of it names in ``--json``)."""
    return [p for p in (op.path, op.src, op.dst) if p is not None]


def check(plan: Plan, root: str, hidden: tuple[str, ...] = ()) -> list[Step]:
    """Check every op in order against ``root`` as the earlier ops leave it
    (``hidden``: root-relative paths no op may name); raise PlanError naming
    the first op that cannot run."""
    view = View(root, hidden)
    steps = []
    for op in plan.ops:
        try:
            steps.append(view.apply(op))
        except _Refused as e:
            raise _fail(str(e), op.index, op.op, op_paths(op)) from None
        except OSError as e:
            raise _fail(f"cannot read the tree: {e.strerror or e}: {e.filename}", op.index, op.op, op_paths(op)) from None
    return steps

