#!/usr/bin/env python3
"""Prints the module graph of actors/src from its `use crate::` lines (test modules
excluded: code after the first `#[cfg(test)]` line) and fails if it has a cycle or an
upward import. Then prints the workspace's crate graph (from the manifests'
[dependencies]) and fails if tether-wire or tether-client depends on an actor framework
or a crate above it.

Run from the workspace root: python3 actors/scripts/module_graph.py
"""
import os, re, sys, tomllib

ROOT = os.path.join(os.path.dirname(__file__), "..", "src")
files = {}
for dirpath, _, names in os.walk(ROOT):
    for name in names:
        if name.endswith(".rs"):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, "::")
            if rel.endswith("::mod"):
                rel = rel[: -len("::mod")]
            files[rel] = path
modules = set(files) - {"lib"}

def resolve(path):
    """The longest known module prefix of a `crate::` path."""
    parts = path.split("::")
    for n in range(len(parts), 0, -1):
        cand = "::".join(parts[:n])
        if cand in modules:
            return cand
    return None

edges = {m: set() for m in modules}
use_re = re.compile(r"\bcrate::((?:\w+::)*\w+)(::\{([^;]*)\})?")
for mod in modules:
    text = open(files[mod]).read()
    text = text.split("#[cfg(test)]")[0]
    text = "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))
    for m in use_re.finditer(text):
        base = m.group(1)
        targets = [base]
        if m.group(3):
            targets = [base + "::" + t.strip().split(" ")[0] for t in re.split(r",", m.group(3)) if t.strip()]
        for t in targets:
            r = resolve(t)
            if r and r != mod and not r.startswith(mod + "::"):
                edges[mod].add(r)

for mod in sorted(modules):
    print(f"{mod:28} -> {', '.join(sorted(edges[mod])) or '(nothing)'}")

# Cycle check (DFS).
state, stack, cycles = {}, [], []
def visit(m):
    state[m] = 1; stack.append(m)
    for n in sorted(edges[m]):
        if state.get(n) == 1:
            cycles.append(stack[stack.index(n):] + [n])
        elif n not in state:
            visit(n)
    stack.pop(); state[m] = 2
for m in sorted(modules):
    if m not in state:
        visit(m)
# The layer rule: a module imports only from layers below it; inside `hub`, only from
# modules before it in HUB_ORDER.
LAYERS = ["util", "wire", "auth", "hub", "connection", "server"]
HUB_ORDER = ["messages", "broker", "presence", "registry", "shards", "bus", "state", "roster", "supervisor"]
def rank(m):
    parts = m.split("::")
    r = (LAYERS.index(parts[0]), -1)
    if parts[0] == "hub" and len(parts) > 1:
        r = (r[0], HUB_ORDER.index(parts[1]))
    return r
upward = [(m, n) for m in modules for n in edges[m]
          if rank(n)[0] > rank(m)[0] or (rank(n)[0] == rank(m)[0] and rank(n)[1] >= rank(m)[1] and m.split("::")[0] == "hub" and n != "hub")]
if upward:
    print("\nUPWARD IMPORTS:")
    for m, n in sorted(upward):
        print(f"  {m} -> {n}")
if cycles:
    print("\nCYCLES:")
    for c in cycles:
        print("  " + " -> ".join(c))

# The crates: tether-wire at the bottom (the framing both sides share), the client on it
# without any server crate or actix, the server crates above.
WORKSPACE = os.path.join(os.path.dirname(__file__), "..", "..")
with open(os.path.join(WORKSPACE, "Cargo.toml"), "rb") as manifest:
    members = tomllib.load(manifest)["workspace"]["members"]
crates = {}
for member in members:
    with open(os.path.join(WORKSPACE, member, "Cargo.toml"), "rb") as manifest:
        package = tomllib.load(manifest)
    crates[package["package"]["name"]] = set(package.get("dependencies", {}))
print()
for crate in sorted(crates):
    inside = sorted(d for d in crates[crate] if d in crates)
    print(f"{crate:28} -> {', '.join(inside) or '(no workspace crate)'}")
FORBIDDEN = {
    "tether-wire": {"actix", "actix-rt", "tokio", "tether-actors", "tether-client", "tether"},
    "tether-client": {"actix", "actix-rt", "tether-actors", "tether"},
}
wrong = [(crate, sorted(crates.get(crate, set()) & banned)) for crate, banned in FORBIDDEN.items()]
wrong = [(crate, deps) for crate, deps in wrong if deps]
for crate, deps in wrong:
    print(f"\nFORBIDDEN DEPENDENCY: {crate} -> {', '.join(deps)}")
if cycles or upward or wrong:
    sys.exit(1)
print("\nno cycle, no upward import, no forbidden crate dependency")
