"""The layout, checked from the code's own imports (an AST walk, imports inside functions included).

The layers, top to bottom (README, "Layout"):

1. `worker.cli` (every command) and the `__main__` entry points;
2. the faces: `worker.api`, `worker.console`, `worker.asgi` (the one place both become one ASGI app)
   and `worker` itself (`from worker import enqueue_message`, the Python face);
3. `scheduler`;
4. the core: `worker.sending`, `worker.contacts`, `worker.webhooks`, `worker.hooks`, `worker.access`,
   `worker.sandbox`;
5. `worker.ratelimit` and the plumbing (every other `worker.*` module).

A module imports only from its own layer or below; the two faces never import each other; no
module imports itself back through others (no circles); the helpers both faces need live once below
them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "scheduler")

CLI, FACES, SCHEDULER, CORE, PLUMBING = 1, 2, 3, 4, 5
LAYER_NAMES = {CLI: "cli", FACES: "faces", SCHEDULER: "scheduler", CORE: "core", PLUMBING: "plumbing"}
CORE_PACKAGES = ("worker.sending", "worker.contacts", "worker.webhooks", "worker.hooks", "worker.access", "worker.sandbox")
FACE_PACKAGES = ("worker.api", "worker.console")


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_of(module: str) -> int:
    if module.endswith(".__main__") or _within(module, "worker.cli"):
        return CLI
    if module in ("worker", "worker.asgi") or any(_within(module, p) for p in FACE_PACKAGES):
        return FACES
    if _within(module, "scheduler"):
        return SCHEDULER
    if any(_within(module, p) for p in CORE_PACKAGES):
        return CORE
    return PLUMBING


def face_of(module: str) -> str | None:
    return next((p for p in FACE_PACKAGES if _within(module, p)), None)


def product_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the product modules it imports, anywhere in its body."""
    modules = product_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(filter(None, (_resolve(a.name, modules) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    target = _resolve(f"{base}.{alias.name}", modules) or _resolve(base, modules)
                    if target:
                        found.add(target)
        found.discard(module)
        graph[module] = found
    return graph


GRAPH = import_graph()


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({LAYER_NAMES[layer_of(m)]}) imports {t} ({LAYER_NAMES[layer_of(t)]})"
                  for m, targets in graph.items() for t in targets if layer_of(t) < layer_of(m))


def cross_face_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                  if face_of(m) and face_of(t) and face_of(m) != face_of(t))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_product():
    """A guard for the checks below: the walk finds the packages and their imports."""
    assert {"worker.cli", "worker.asgi", "worker.api.campaigns", "worker.console.app", "scheduler.campaigns", "worker.sending.send",
            "worker.settings"} <= set(GRAPH)
    assert "worker.sending.send" in GRAPH["worker.sending.tasks"]
    assert sum(len(t) for t in GRAPH.values()) > 300


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports(GRAPH) == []


def test_the_faces_never_import_each_other():
    assert cross_face_imports(GRAPH) == []


def test_there_are_no_import_circles():
    assert circles(GRAPH) == []


@pytest.mark.parametrize("bad, expected", [
    ({"worker.settings": {"worker.sending.send"}}, "worker.settings (plumbing) imports worker.sending.send (core)"),
    ({"scheduler.campaigns": {"worker.cli.common"}}, "scheduler.campaigns (scheduler) imports worker.cli.common (cli)"),
    ({"worker.sending.gate": {"scheduler.window"}}, "worker.sending.gate (core) imports scheduler.window (scheduler)"),
])
def test_an_upward_import_is_caught(bad, expected):
    assert upward_imports(bad) == [expected]


def test_a_cross_face_import_and_a_circle_are_caught():
    assert cross_face_imports({"worker.console.routes_keys": {"worker.api.keys"}}) == [
        "worker.console.routes_keys imports worker.api.keys"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Rule 4: what two faces need lives once, below them: (module, what it defines, who uses it).
SHARED_HELPERS = {
    "contacts export rows": ("worker.contacts.service", "export_row", ("worker.cli", "worker.console")),
    "CSV cells safe from formula injection": ("worker.contacts.service", "csv_cell", ("worker.cli", "worker.console")),
    "health probes": ("worker.health", "database_state", ("worker.api", "worker.console")),
    "report-stream guard": ("worker.db", "streamed_read", ("worker.api", "worker.console")),
    "upload copy to a temp dir": ("worker.uploads", "copy_upload", ("worker.api", "worker.console")),
    "API keys": ("worker.access.keys", "create_key", ("worker.cli", "worker.console")),
}


@pytest.mark.parametrize("what", sorted(SHARED_HELPERS))
def test_a_helper_two_faces_need_lives_once_below_them(what):
    module, name, faces = SHARED_HELPERS[what]
    assert layer_of(module) > FACES
    defined = {n.name for n in ast.parse(product_modules()[module].read_text()).body
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    assert name in defined, f"{module} defines no {name}"
    for face in faces:
        users = [m for m, targets in GRAPH.items() if _within(m, face) and module in targets]
        assert users, f"no module of {face} uses {module}"


# Rule 2: one owner of campaign status transitions.
def _campaign_status_writes(source: str) -> list[str]:
    """`update(Campaign)` statements whose values set `status`, and `<campaign>.status = ...`."""
    found = []
    for start in (i for i in range(len(source)) if source.startswith("update(Campaign)", i)):
        statement = source[start:start + 600].split(".execution_options", 1)[0].split("\n\n", 1)[0]
        values = statement.split(".values(", 1)[1] if ".values(" in statement else ""
        if "status=" in values.replace("_status=", ""):
            found.append(statement.splitlines()[0])
    found += [line.strip() for line in source.splitlines() if ".status = " in line and "campaign" in line.lower()]
    return found


def test_only_the_lifecycle_changes_a_campaigns_status():
    writers = {m: w for m, path in product_modules().items() if m != "worker.lifecycle"
               for w in [_campaign_status_writes(path.read_text())] if w}
    assert writers == {}
    assert _campaign_status_writes(product_modules()["worker.lifecycle"].read_text())   # the check can see one


def test_the_lifecycle_table_tells_the_truth_about_reopening():
    from worker import lifecycle
    from worker.status import CampaignStatus as S

    assert S.RUNNING in lifecycle.TRANSITIONS[S.COMPLETED]          # reopen(): requeued messages
    assert not lifecycle.operator_may(S.COMPLETED, S.RUNNING)       # ... but never an operator's resume
    assert lifecycle.TRANSITIONS[S.CANCELLED] == frozenset()


# Rule 3: a service function that writes takes the Runtime and owns its transaction; faces open none.
def _write_transactions_opened(path: Path) -> list[str]:
    """`x.session_factory.begin()`, `x.session_factory()`, or the factory handed to a function as an
    argument: a face that opens (or lends out) a write transaction. Composing an app with
    `session_factory=` (the receiver's factory) is not a transaction."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        opens = isinstance(func, ast.Attribute) and (
            func.attr == "session_factory"
            or (func.attr == "begin" and isinstance(func.value, ast.Attribute) and func.value.attr == "session_factory"))
        lends = any(isinstance(a, ast.Attribute) and a.attr == "session_factory" for a in node.args)
        if opens or lends:
            found.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_no_face_or_command_opens_a_write_transaction():
    opened = [line for module, path in sorted(product_modules().items()) if layer_of(module) <= FACES
              for line in _write_transactions_opened(path)]
    assert opened == []


def test_the_transaction_check_sees_one(tmp_path):
    face = tmp_path / "face.py"
    face.write_text("def f(rt):\n    with rt.session_factory.begin() as s:\n        g(s)\n    create_key(rt.session_factory, name='x')\n")
    assert len(_write_transactions_opened(face)) == 2


def _sql_statements(path: Path) -> list[str]:
    """`sa.select(...)`, `sa.update(...)`, `sa.insert(...)`, `sa.delete(...)`, `sa.text(...)`: SQL written here."""
    return [f"{path.name}:{node.lineno}" for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("select", "update", "insert", "delete", "text")
            and isinstance(node.func.value, ast.Name) and node.func.value.id in ("sa", "sqlalchemy")]


def test_faces_and_commands_write_no_sql():
    """A face binds, authorises, calls a service function and renders: the SQL lives below it."""
    written = [line for module, path in sorted(product_modules().items()) if layer_of(module) <= FACES
               for line in _sql_statements(path)]
    assert written == []
    assert _sql_statements(product_modules()["scheduler.report"])   # the check can see one
