#!/usr/bin/env python3
"""Checks the workspace's layering, as ARCHITECTURE.md states it, and fails on a breach.

For every crate's `src/`: the module graph from its `use crate::` paths (test modules
excluded: code after the first `#[cfg(test)]` line), which must have no cycle, and, for
the crates that declare layers below, no upward import (a module imports only from layers
below its own; inside a folder given an order, only from the modules before it). Then the
crate graph from the manifests' [dependencies], with the dependencies some crates must
never have. Then no separator byte spelled outside tether-wire (tests excepted).

Run from anywhere: python3 scripts/module_graph.py (CI runs it; -v prints the graphs).
"""
import os, re, sys, tomllib

WORKSPACE = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
VERBOSE = "-v" in sys.argv[1:]

# Layers, bottom up, by top-level module; a folder listed in ORDER is also ordered inside.
LAYERS = {
    "wire": ["frame", "reply", "verb"],
    "actors": ["util", "protocol", "auth", "hub", "connection", "server"],
    "cluster": ["answer", "names", "metrics", "history", "throttle", "verifiers", "sentinel",
                "topology", "worker", "sharded"],
    "client": ["message", "error", "framing", "incoming", "connection"],
    ".": ["toml_error", "limits", "pem", "tls_client", "stdout", "config", "broker", "users",
          "admission", "tls", "admin", "cli", "check_config", "serve"],
}
ORDER = {
    ("actors", "hub"): ["messages", "recent_ids", "broker", "presence", "registry", "shards", "bus",
                        "state", "roster", "supervisor"],
    # The shared pieces, then one file per table of server.toml (a table before the one that
    # holds it), then the check across tables, the loading and the printer's frame.
    (".", "config"): ["error", "duration", "format", "check", "server_tls", "websocket", "server",
                      "auth", "events", "admin_tls", "admin", "logging", "cluster", "listeners",
                      "load", "effective"],
}
# Crates that must stay small at the bottom: the wire format and the client.
FORBIDDEN = {
    "tether-wire": {"actix", "actix-rt", "tokio", "tether-actors", "tether-client", "tether"},
    "tether-client": {"actix", "actix-rt", "tether-actors", "tether"},
}
ROOTS = {"lib", "main"}

def modules_of(src):
    """Module path ('hub::bus') → file, for every .rs file under src."""
    files = {}
    for dirpath, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, src)[:-3].replace(os.sep, "::")
                if rel.endswith("::mod"):
                    rel = rel[: -len("::mod")]
                files[rel] = path
    return files

def code_of(path):
    """The file's code before its test module, without comment lines."""
    text = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
    return "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))

USE = re.compile(r"\bcrate::((?:\w+::)*\w+)(::\{([^;]*)\})?")

def graph(files):
    modules = set(files) - ROOTS
    def resolve(path):
        parts = path.split("::")
        for n in range(len(parts), 0, -1):
            candidate = "::".join(parts[:n])
            if candidate in modules:
                return candidate
        return None
    edges = {m: set() for m in modules}
    for module in modules:
        for m in USE.finditer(code_of(files[module])):
            targets = [m.group(1)]
            if m.group(3):
                targets = [m.group(1) + "::" + t.strip().split(" ")[0]
                           for t in m.group(3).split(",") if t.strip()]
            for target in targets:
                found = resolve(target)
                if found and found != module and not found.startswith(module + "::") \
                        and not module.startswith(found + "::"):
                    edges[module].add(found)
    return edges

def cycles_of(edges):
    state, stack, found = {}, [], []
    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2
    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found

def upward_of(crate, edges):
    layers = LAYERS.get(crate)
    if layers is None:
        return []
    def rank(module):
        parts = module.split("::")
        if parts[0] not in layers:
            return None
        inner = ORDER.get((crate, parts[0]))
        if inner and len(parts) > 1 and parts[1] not in inner:
            return None
        return (layers.index(parts[0]),
                inner.index(parts[1]) if inner and len(parts) > 1 else -1)
    wrong = []
    for m in edges:
        for n in edges[m]:
            rm, rn = rank(m), rank(n)
            if rm is None or rn is None:
                wrong.append((m, n, "not in the declared layers"))
            elif rn[0] > rm[0]:
                wrong.append((m, n, "upward"))
            elif rn[0] == rm[0] and (crate, m.split("::")[0]) in ORDER and rn[1] >= rm[1] \
                    and rn[1] >= 0 and rm[1] >= 0:
                wrong.append((m, n, "upward inside its folder"))
    return sorted(wrong)

failures = []
with open(os.path.join(WORKSPACE, "Cargo.toml"), "rb") as manifest:
    members = tomllib.load(manifest)["workspace"]["members"]
crates = {}
for member in members:
    with open(os.path.join(WORKSPACE, member, "Cargo.toml"), "rb") as manifest:
        package = tomllib.load(manifest)
    name = package["package"]["name"]
    crates[name] = set(package.get("dependencies", {}))
    edges = graph(modules_of(os.path.join(WORKSPACE, member, "src")))
    if VERBOSE:
        print(f"== {name} ({member}/src)")
        for m in sorted(edges):
            print(f"  {m:28} -> {', '.join(sorted(edges[m])) or '(nothing)'}")
    for cycle in cycles_of(edges):
        failures.append(f"{name}: import cycle: {' -> '.join(cycle)}")
    for m, n, why in upward_of(member, edges):
        failures.append(f"{name}: {m} imports {n} ({why})")

if VERBOSE:
    print("== crates")
    for crate in sorted(crates):
        inside = sorted(d for d in crates[crate] if d in crates)
        print(f"  {crate:28} -> {', '.join(inside) or '(no workspace crate)'}")
for crate, banned in FORBIDDEN.items():
    for dependency in sorted(crates.get(crate, set()) & banned):
        failures.append(f"{crate} must not depend on {dependency}")

# Only tether-wire spells the separators: no "\x1e"/"\x1f" (nor \u{1e}, 0x1E…) in the
# other crates' code outside their test modules.
SEPARATOR = re.compile(r"\\x1[eEfF]|\\u\{1[eEfF]\}|0x1[eEfF]\b|\\03[67]")
# A range's end is a class of control characters, not a separator (`[\x01-\x1f]`).
RANGE_END = re.compile(r"-\\*x1[fF]")
# Files allowed to spell one, and why.
ALLOWED = {
    "actors/src/auth/password.rs":
        "the stand-in hashes' password holds both separators, so no client can send it",
}
for member in members:
    if member == "wire":
        continue
    for module, path in modules_of(os.path.join(WORKSPACE, member, "src")).items():
        for number, line in enumerate(code_of(path).splitlines(), 1):
            if SEPARATOR.search(RANGE_END.sub("", line)) and \
                    os.path.relpath(path, WORKSPACE) not in ALLOWED:
                failures.append(f"{os.path.relpath(path, WORKSPACE)}: a separator byte spelled "
                                f"outside tether-wire: {line.strip()}")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"module graph: {len(members)} crates, no cycle, no upward import, "
      "no forbidden dependency, no separator outside tether-wire")
