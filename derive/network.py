"""Networks: layers composed by name into one ordinary layer spec.

A network spec names its layers and wires them by renaming their tensors:

    network mlp2  Two-layer perceptron
    use dense as fc1 (W = W1, b = b1, z = z1, J = D, I = H)
    use sigmoid as act1 (z = z1, a = a1)
    use dense as fc2 (x = a1, W = W2, b = b2, z = z2, I = C)
    use softmax_cross_entropy as ce (z = z2)

    for l in 1..40: use dense as fc{l} (x = a{l-1}, W = W{l}, b = b{l}, z = z{l})

A `use` takes a built-in name or a spec file (relative to the network's file); the renames
map the layer's tensor, dimension, constant or index names to the network's.  Wiring is by
name: a tensor one layer computes and another reads is the same name in both.  A name not
renamed keeps its own (two layers reading `x` share it; two computing `z` is an error), and
a dimension not renamed takes the dimension of the tensor it is wired to (fc2's x[N, J]
read from a1[N, H] makes J = H), else keeps its own name (one name, one dimension).  `for l in A..B:` repeats a statement with {l}, {l-1},
{l+1} written in.

Composition writes one flat layer spec (`section` statements mark each layer's equations)
and hands it to the ordinary parser, so derivation, documents, kernels and the verifier take
a network as they take any layer: nothing downstream knows it was composed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SpecError
from .names import layer_name_problem

IDENT = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
NAME = re.compile(r"[A-Za-z_]\w*")
USE = re.compile(r"use\s+(?P<layer>[^\s()]+)(?:\s+as\s+(?P<alias>\S+?))?\s*"
                 r"(?:\((?P<renames>.*)\))?\s*\Z")
FOR = re.compile(r"for\s+(?P<var>[A-Za-z_]\w*)\s+in\s+(?P<lo>-?\d+)\s*\.\.\s*(?P<hi>-?\d+)\s*:"
                 r"\s*(?P<body>.*)\Z")
MAX_REPEAT = 1000
DECLARED = ("input", "param", "target", "output", "intermediate", "loss")
KEPT = ("given", "outside")          # statements carried over with their names renamed


def is_network(text: str) -> bool:
    """Whether spec text is a network (its first statement is `network NAME`); read
    without SymPy, as a warm kernel-cache lookup is."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            return words[0] == "network"
    return False


def layers_digest(text: str, file: str, depth: int = 0) -> str | None:
    """A digest of the texts of every layer a network uses (through nested networks),
    read without SymPy: with the network's own text it keys the warm kernel cache, so an
    edit to a used layer is a miss.  None when a layer cannot be read (the cold path then
    says why)."""
    import hashlib

    from .builtins import BUILTINS, builtin_text

    h = hashlib.sha256()
    for name in sorted(set(re.findall(r"^\s*(?:for\b[^:]*:\s*)?use\s+([^\s()#]+)", text,
                                      re.M))):
        try:
            if name in BUILTINS:
                part, where = builtin_text(name), f"<builtin {name}>"
            else:
                where = _locate(name, file)
                part = Path(where).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        h.update(f"{name}\0{part}\0".encode())
        if is_network(part):
            inner = layers_digest(part, where, depth + 1) if depth < 20 else None
            if inner is None:
                return None
            h.update(inner.encode())
    return h.hexdigest()


@dataclass
class Use:
    """One layer of a network: the Layer, its name in the network, its renames."""
    layer: object
    alias: str
    renames: dict = field(default_factory=dict)
    where: object = None             # the statement it was written in, for errors

    def error(self, message: str, file: str) -> SpecError:
        if self.where is not None:
            return self.where.error(f"{self.alias}: {message}")
        return SpecError(f"{self.alias}: {message}", file)


class Network:
    """The Python way to compose: the same rules as a network spec file.

        net = Network("mlp3", "three dense layers")
        for l in range(1, 4):
            net.use("dense", f"fc{l}", x=f"a{l-1}", W=f"W{l}", b=f"b{l}", z=f"z{l}")
            ...
        layer = net.build()
    """

    def __init__(self, name: str, doc: str = ""):
        self.name, self.doc = name, doc
        self.uses: list[Use] = []

    def use(self, layer, alias: str | None = None, **renames: str) -> "Network":
        """Add a layer (a built-in name, a spec path or a Layer), renaming its names."""
        from .builtins import resolve

        resolved = resolve(layer)
        alias = alias or resolved.name
        problem = layer_name_problem(alias) or _renames_problem(renames)
        if problem:
            raise SpecError(f"{alias}: {problem}", f"<Network {self.name}>")
        self.uses.append(Use(resolved, alias, dict(renames)))
        return self

    def build(self, constants: dict | None = None):
        return compose(self.name, self.doc, self.uses, f"<Network {self.name}>", constants)


def parse_network(text: str, file: str = "<spec>", constants: dict | None = None):
    """A network spec (first statement `network NAME`) -> the composed Layer."""
    from .builtins import resolve
    from .parser import _statements

    name, doc, uses = None, "", []
    for stmt, body in _statements(text, file):
        word, _, rest = body.strip().partition(" ")
        if word == "network":
            if name is not None:
                raise stmt.error("'network' appears twice")
            parts = rest.split(None, 1)
            problem = layer_name_problem(parts[0]) if parts else "'network' needs a name"
            if problem:
                raise stmt.error(problem)
            name, doc = parts[0], (parts[1].strip() if len(parts) > 1 else "")
        elif word in ("use", "for"):
            for line in _expand(stmt, body.strip()):
                layer, alias, renames = _use(stmt, line)
                try:
                    resolved = resolve(_locate(layer, file))
                except SpecError as exc:
                    raise stmt.error(f"cannot use '{layer}': {exc}") from None
                uses.append(Use(resolved, alias or resolved.name, renames, stmt))
        else:
            raise stmt.error(f"a network has 'use LAYER [as NAME] (a = b, ...)' and "
                             f"'for l in 1..L: use ...' statements, not '{word}'")
    if not uses:
        raise SpecError("the network uses no layer: add 'use LAYER ...'", file)
    return compose(name, doc, uses, file, constants)


def _expand(stmt, body: str) -> list[str]:
    """A `for` statement as the `use` lines it stands for (else the line itself)."""
    m = FOR.match(body)
    if body.startswith("for ") and not m:
        raise stmt.error("expected 'for l in 1..L: use ...' (integer bounds)")
    if not m:
        return [body]
    lo, hi, var = int(m["lo"]), int(m["hi"]), m["var"]
    if not 0 < hi - lo + 1 <= MAX_REPEAT:
        raise stmt.error(f"'for {var} in {lo}..{hi}' must repeat 1 to {MAX_REPEAT} times")
    slot = re.compile(r"\{" + var + r"\s*(?:([+-])\s*(\d+))?\s*\}")

    def at(k):
        return lambda s: str(k + (int(s[2]) if s[1] == "+" else -int(s[2]) if s[1] else 0))

    lines = [slot.sub(at(k), m["body"]) for k in range(lo, hi + 1)]
    if "{" in lines[0]:
        raise stmt.error(f"only {{{var}}}, {{{var}-K}} and {{{var}+K}} are written in")
    return lines


def _use(stmt, line: str):
    m = USE.match(line)
    if not m:
        raise stmt.error("expected 'use LAYER [as NAME] [(a = b, ...)]'")
    alias = m["alias"]
    if alias is not None and layer_name_problem(alias):
        raise stmt.error(f"as {alias}: {layer_name_problem(alias)}")
    renames = {}
    body = (m["renames"] or "").strip()
    for item in body.split(",") if body else []:
        old, eq, new = (p.strip() for p in item.partition("="))
        if not eq:
            raise stmt.error(f"'{item.strip()}': renames are written 'name = new_name'")
        if old in renames:
            raise stmt.error(f"'{old}' is renamed twice")
        renames[old] = new
    problem = _renames_problem(renames)
    if problem:
        raise stmt.error(problem)
    return m["layer"], alias, renames


def _renames_problem(renames: dict) -> str | None:
    for old, new in renames.items():
        if not (isinstance(new, str) and NAME.fullmatch(old) and NAME.fullmatch(new)):
            return f"'{old} = {new}': renames are written 'name = new_name'"
    return None


def _locate(layer: str, file: str) -> str:
    """A spec path relative to the network file's folder; a built-in name as it is."""
    if layer.endswith(".bp") and not Path(layer).is_absolute() and not file.startswith("<"):
        return str(Path(file).parent / layer)
    return layer


# ---- composition ------------------------------------------------------------------------

def compose(name: str, doc: str, uses: list[Use], file: str, constants: dict | None = None):
    """The Layer of a network: one flat spec, parsed as any other."""
    from .parser import parse_spec

    if name is None:
        raise SpecError("a network spec starts with 'network NAME'", file)
    text = _Composition(file).run(name, doc, uses)
    try:
        return parse_spec(text, file, constants)
    except SpecError as exc:
        raise SpecError(f"the composed network is not a valid layer: {exc.message}",
                        file) from None


class _Composition:
    def __init__(self, file: str):
        self.file = file
        self.tensors: dict[str, dict] = {}     # name -> role, dims, values, by, nograd
        self.dims: dict[str, str | None] = {}  # name -> definition text (None: a plain one)
        self.consts: dict[str, str] = {}
        self.kept: list[str] = []              # given / outside statements
        self.sections: list[tuple[str, str, list[str]]] = []
        self.loss: str | None = None
        self.reads: dict[str, set] = {}        # layer -> the network tensors it reads

    def run(self, name, doc, uses) -> str:
        seen = set()
        for use in uses:
            if use.alias in seen:
                raise use.error(f"two layers are named '{use.alias}'; name them apart "
                                f"with 'as'", self.file)
            seen.add(use.alias)
        self.dim_maps = {id(u): m for u, m in zip(uses, self._unify_dims(uses))}
        for use in uses:
            self._add(use)
        return self._text(name, doc)

    def _add(self, use: Use):
        """Declarations, carried statements and equations of one layer, renamed."""
        layer = use.layer
        own = _names(layer)
        for old in use.renames:
            if old not in own:
                raise use.error(f"{layer.name} has no tensor, dimension, constant or index "
                                f"named '{old}'; its names: {', '.join(sorted(own))}",
                                self.file)
        dim_map = self.dim_maps[id(use)]
        rename = {n: use.renames.get(n, n) for n in own} | dim_map
        for t in layer.tensors.values():
            self._declare(use, t, rename)
        section = []
        from .parser import _statements

        for _stmt, body in _statements(layer.source, layer.file):
            word = body.split(None, 1)[0]
            rest = body[len(word):].strip()
            if word in ("layer", "example", "section") or word in DECLARED:
                continue
            text = IDENT.sub(lambda m: rename.get(m.group(), m.group()), rest)
            if word == "dims":
                self._dims(use, text)
            elif word == "const":
                self._consts(use, text)
            elif word == "nograd":
                for n in (p.strip() for p in text.split(",")):
                    self.tensors[n]["nograd"] = True
            elif word in KEPT:
                if f"{word} {text}" not in self.kept:
                    self.kept.append(f"{word} {text}")
            else:
                section.append(IDENT.sub(lambda m: rename.get(m.group(), m.group()), body))
        self.sections.append((use.alias, layer.name, section))

    def _unify_dims(self, uses: list[Use]) -> list[dict]:
        """Each use's dimension -> its network name.  Wiring a tensor makes the
        dimensions of its slots one (union-find); a class of dimensions is named by the
        rename written for one of them, else by the first one's own name.  Renames to the
        same name are one dimension; dimensions nothing renames or wires are each their
        layer's own."""
        parent: dict = {}           # node -> parent; a node is a rename or (use, dim)

        def find(node):
            while parent.setdefault(node, node) != node:
                node = parent[node]
            return node

        def union(a, b, use):
            ra, rb = find(a), find(b)
            if ra == rb:
                return
            if isinstance(ra, str) and isinstance(rb, str):
                raise use.error(f"wiring makes dimensions {ra} and {rb} one; rename one "
                                f"to the other", self.file)
            if isinstance(rb, str) or (not isinstance(ra, str) and
                                       list(parent).index(rb) < list(parent).index(ra)):
                ra, rb = rb, ra     # the named root, else the first seen, stays the root
            parent[rb] = ra

        nodes, wired = [], {}
        for k, use in enumerate(uses):
            node = {d: use.renames.get(d, (k, d)) for d in use.layer.dims}
            for n in node.values():
                find(n)
            for t in use.layer.tensors.values():
                net = use.renames.get(t.name, t.name)
                slots = tuple(node[d] for d in t.dims)
                first = wired.setdefault(net, slots)
                if len(first) != len(slots):
                    raise use.error(f"{t.name}{_shape(t.dims)} is wired to {net}, which "
                                    f"has {len(first)} indices", self.file)
                for a, b in zip(first, slots):
                    union(a, b, use)
            nodes.append(node)
        # a class is named by its rename, else by its first dimension's own name; classes
        # with one name are one dimension (as tensors of one name are one tensor)
        return [{d: _root_name(find(n)) for d, n in node.items()} for node in nodes]

    def _declare(self, use: Use, t, rename: dict):
        name = rename[t.name]
        dims = tuple(rename[d] for d in t.dims)
        values = rename[t.values] if t.values else None
        role = "loss" if t.name == use.layer.loss else t.role
        if t.role == "input":
            self.reads.setdefault(use.alias, set()).add(name)
        net = self.tensors.get(name)
        if net is None:
            self.tensors[name] = dict(role=role, dims=dims, values=values, nograd=False,
                                      by=use.alias if role in ("output", "intermediate",
                                                               "loss") else None,
                                      read=False)
            if role == "loss":
                self._one_loss(use, name)
            return
        computed = role in ("output", "intermediate", "loss")
        if computed and net["by"] is not None:
            raise use.error(f"{name} is computed by both {net['by']} and {use.alias}; "
                            f"rename one ({t.name} = ...)", self.file)
        if computed:          # read earlier, computed here
            net.update(role=role, by=use.alias, read=True)
            if role == "loss":
                self._one_loss(use, name)
        elif net["by"] is not None:
            net["read"] = True
        elif net["role"] != role and {net["role"], role} != {"input", "param"}:
            raise use.error(f"{name} is a {net['role']} of an earlier layer and a {role} "
                            f"of {use.layer.name}", self.file)
        if values != net["values"]:
            raise use.error(f"{name} holds indices into {values} here and into "
                            f"{net['values']} before", self.file)

    def _one_loss(self, use, name):
        if self.loss is not None:
            raise use.error(f"a network has one loss; {self.loss} is already it (rename "
                            f"{name} and add the two in a layer of your own)", self.file)
        self.loss = name

    def _dims(self, use, text):
        for item in _top_level_split(text):
            dname, eq, definition = (p.strip() for p in item.partition("="))
            new = definition if eq else None
            if self.dims.get(dname, new) != new:
                raise use.error(f"dimension {dname} is defined as {self.dims[dname]} by an "
                                f"earlier layer and as {new} here", self.file)
            self.dims.setdefault(dname, new)

    def _consts(self, use, text):
        for item in _top_level_split(text):
            cname, _, value = (p.strip() for p in item.partition("="))
            if self.consts.setdefault(cname, value) != value:
                raise use.error(f"constant {cname} is {self.consts[cname]} in an earlier "
                                f"layer and {value} here; rename one", self.file)

    def _text(self, name, doc) -> str:
        lines = [f"layer {name} {doc}".rstrip()]
        # plain dimensions in the order the declarations first use them (x[N, D]: N, D)
        used = [d for role in DECLARED for t in self.tensors.values() if t["role"] == role
                for d in t["dims"]]
        plain = sorted((d for d, v in self.dims.items() if v is None),
                       key=lambda d: used.index(d) if d in used else len(used))
        lines.append(f"dims {', '.join(plain)}")
        lines += [f"dims {d} = {v}" for d, v in self.dims.items() if v is not None]
        if self.consts:
            lines.append("const " + ", ".join(f"{c} = {v}" for c, v in self.consts.items()))
        by_role: dict[str, list[str]] = {}
        for tname, t in self.tensors.items():
            role = t["role"]
            if role == "output" and t["read"]:
                role = "intermediate"      # computed by one layer, read by another
            decl = tname + _shape(t["dims"]) + (f" in {t['values']}" if t["values"] else "")
            by_role.setdefault(role, []).append(decl)
        for role in DECLARED:
            if by_role.get(role):
                lines.append(f"{role} {', '.join(by_role[role])}")
        nograd = [n for n, t in self.tensors.items()
                  if t["nograd"] and t["role"] in ("input", "param")]
        if nograd:
            lines.append(f"nograd {', '.join(nograd)}")
        lines += self.kept
        for alias, layer_name, equations in self._flow_order():
            lines += ["", f"section {alias} {layer_name}"] + equations
        return "\n".join(lines) + "\n"


    def _flow_order(self) -> list:
        """The sections, each after the layers whose values it reads (as written where
        that allows): the flat spec reads in the order data flows."""
        by = {n: t["by"] for n, t in self.tensors.items() if t["by"] is not None}
        sections = {sec[0]: sec for sec in self.sections}
        order, state = [], {}

        def visit(alias):
            if state.get(alias):
                return              # done, or on the path: the parser reports a cycle
            state[alias] = True
            for name in sorted(self.reads.get(alias, ())):
                if name in by and by[name] != alias:
                    visit(by[name])
            order.append(sections[alias])

        for alias in sections:
            visit(alias)
        return order


def _root_name(root) -> str:
    return root if isinstance(root, str) else root[1]


def _shape(dims) -> str:
    return f"[{', '.join(dims)}]" if dims else ""


def _names(layer) -> set[str]:
    """Every name a layer's spec text uses: tensors, dimensions, constants, indices."""
    from .functions import FUNCTIONS
    from .parser import DECL_KEYWORDS, OTHER_KEYWORDS, _statements

    words = set()
    for _stmt, body in _statements(layer.source, layer.file):
        word = body.split(None, 1)[0]
        if word in ("layer", "section"):
            continue
        words |= {m.group() for m in IDENT.finditer(body)}
    return words - set(FUNCTIONS) - {"sum", "in"} - set(DECL_KEYWORDS) - set(OTHER_KEYWORDS)


def _top_level_split(text: str) -> list[str]:
    """text split at commas outside brackets."""
    items, depth, start = [], 0, 0
    for pos, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            items.append(text[start:pos])
            start = pos + 1
    items.append(text[start:])
    return [i.strip() for i in items if i.strip()]
