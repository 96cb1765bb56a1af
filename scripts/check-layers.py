#!/usr/bin/env python3
"""Checks the module structure of the workspace from its source text.

  python3 scripts/check-layers.py          # prints the graph's figures; exit 1 on a violation

1. Crates: lorastream-base <- lorastream-store, lorastream-ml <- lorastream
   (the daemon). The ml and store crates name no daemon module and no crate
   above them; the ml crate names none of actix, tokio, rusqlite, reqwest.
2. Layers of the daemon crate, bottom to top: config, util, data, learn,
   publish, serve, run (and the binary's cli on top). A module names only modules of
   its own layer or below: no arrow runs back up.
3. No import circle: in every folder, the references between its child
   modules (a file, or a whole sub-folder) form no cycle. A child may use
   its parent's `mod.rs` (the folder's shared types) and the parent its
   children; siblings must be ordered.

4. Module maps: a lib.rs or mod.rs whose `//!` header maps its modules
   (a `# Layout` section or `//! - ` items) names every module it declares.

References are `crate::…`, `super::…` and `self::…` paths, in `use` trees and
in code, with `#[cfg(test)]` code left out.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {
    "lorastream": "src",
    "lorastream_ml": "crates/lorastream-ml/src",
    "lorastream_store": "crates/lorastream-store/src",
    "lorastream_base": "crates/lorastream-base/src",
}
CRATE_ORDER = {"lorastream_base": 0, "lorastream_store": 1, "lorastream_ml": 1, "lorastream": 2}
LAYERS = ["config", "util", "data", "learn", "publish", "serve", "run", "cli"]
FORBIDDEN_IN_ML = ["actix", "actix_web", "tokio", "rusqlite", "reqwest"]


def strip_tests(text):
    """Source without comments, strings' contents and `#[cfg(test)]` items."""
    # One pass, so a `//` inside a string ("https://…") is not a comment and
    # a quote inside a comment or a char literal starts no string.
    text = re.sub(
        r'//[^\n]*|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])\'',
        lambda m: "" if m.group(0).startswith("//") else ('""' if m.group(0)[0] == '"' else "' '"),
        text,
    )
    out, skip, depth = [], False, 0
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("#[cfg(test)]"):
            # Skip the next item: to the end of its braces (or its `;`).
            i += 1
            depth, started = 0, False
            while i < len(lines):
                l = lines[i]
                depth += l.count("{") - l.count("}")
                started = started or "{" in l
                i += 1
                if (started and depth <= 0) or (not started and l.rstrip().endswith(";")):
                    break
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def modules(src_dir):
    """module path (tuple) -> file, for every .rs file under src_dir."""
    mods = {}
    for d, _, files in os.walk(src_dir):
        for f in files:
            if not f.endswith(".rs") or f == "tests.rs":
                continue
            rel = os.path.relpath(os.path.join(d, f), src_dir)
            parts = rel[:-3].split(os.sep)
            if parts == ["main"]:
                continue  # the binary's root: it names only cli and the library
            if parts[-1] in ("mod", "lib"):
                parts = parts[:-1]
            if parts and parts[0] == "bin":
                continue
            mods[tuple(parts)] = os.path.join(d, f)
    return mods


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    return [p for part in parts if part for p in expand_use(prefix + part)]


def references(text):
    """Every path that starts with crate, super, self or a crate's name."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths += expand_use(m.group(1))
    body = re.sub(r"\buse\s+[^;]+;", "", text)
    paths += re.findall(r"\b(?:crate|super|self|lorastream\w*)(?:::\w+)+", body)
    return [p.replace(" ", "") for p in paths]


def resolve(path, here, is_dir_mod, mods):
    """The module (tuple) a path names, relative to module `here`, or None."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base, rest = here, segs
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    else:
        return None
    best = base
    for i in range(len(rest)):
        cand = base + tuple(rest[: i + 1])
        if cand in mods:
            best = cand
        else:
            break
    return best


def main():
    problems = []
    edges_total = 0
    for crate, src in CRATES.items():
        src_dir = os.path.join(ROOT, src)
        mods = modules(src_dir)
        graph = {}
        for mod, path in mods.items():
            text = strip_tests(open(path, encoding="utf-8").read())
            is_dir_mod = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
            for ref in references(text):
                head = ref.split("::")[0]
                if head.startswith("lorastream"):
                    if CRATE_ORDER.get(head, 9) >= CRATE_ORDER[crate] and head != crate:
                        problems.append(f"{path}: crate {crate} names {ref} (a crate at or above it)")
                    continue
                target = resolve(ref, mod, is_dir_mod, mods)
                if target is None or target == mod:
                    continue
                graph.setdefault(mod, set()).add(target)
            if crate == "lorastream_ml":
                for dep in FORBIDDEN_IN_ML:
                    if re.search(rf"\b{dep}::", text):
                        problems.append(f"{path}: the ml crate uses {dep}")
        edges_total += sum(len(v) for v in graph.values())
        if crate == "lorastream":
            problems += check_layers(graph, mods)
        problems += check_cycles(graph, mods, crate)
        problems += check_maps(mods)
    print(f"check-layers: {edges_total} module references in {len(CRATES)} crates")
    for p in problems:
        print("  " + p)
    if problems:
        print(f"check-layers: {len(problems)} problem(s)")
        return 1
    print("check-layers: no upward arrow, no import circle")
    return 0


def check_maps(mods):
    """A folder's `//!` map names every module it declares: in each lib.rs or
    mod.rs whose header has a `# Layout` section or a list of modules (lines
    starting `//! - `), every `mod NAME;` must appear there as `NAME`."""
    out = []
    for path in sorted(set(mods.values())):
        if os.path.basename(path) not in ("lib.rs", "mod.rs"):
            continue
        text = open(path, encoding="utf-8").read()
        header = "\n".join(l for l in text.split("\n") if l.startswith("//!"))
        if "# Layout" not in header and "\n//! - " not in "\n" + header:
            continue
        declared = re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M)
        for name in declared:
            if name == "tests":
                continue
            if not re.search(rf"\b{name}\b", header):
                out.append(f"{path}: its module map (//!) does not name `{name}`")
    return out


def layer_of(mod):
    if not mod:
        return None
    return LAYERS.index(mod[0]) if mod[0] in LAYERS else None


def check_layers(graph, mods):
    out = []
    for src, targets in graph.items():
        ls = layer_of(src)
        for t in targets:
            lt = layer_of(t)
            if ls is not None and lt is not None and lt > ls:
                out.append(f"{mods[src]}: {'::'.join(src)} ({LAYERS[ls]}) names {'::'.join(t)} ({LAYERS[lt]}), a layer above it")
    return out


def check_cycles(graph, mods, crate):
    """At each folder, the graph of its children (sub-trees collapsed) is acyclic."""
    out = []
    folders = {m[:i] for m in mods for i in range(len(m))}
    for folder in sorted(folders):
        n = len(folder)
        g = {}
        for src, targets in graph.items():
            if len(src) <= n or src[:n] != folder:
                continue
            for t in targets:
                if len(t) <= n or t[:n] != folder or t[n] == src[n]:
                    continue
                g.setdefault(src[n], set()).add(t[n])
        for comp in find_cycles(g):
            where = "::".join((crate,) + folder)
            out.append(f"{where}: import circle among {', '.join(comp)}")
    return out


def find_cycles(g):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(g) | {w for ws in g.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
