"""docs/architecture.md's import table against the code: every jaxrec package has a row, every
import between packages is one its row allows, the allowed imports run one way (no cycle),
and no package imports another package's private modules or names."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "jaxrec"
HEADER = "| package | owns | may import |"


def read_table(text: str) -> dict[str, set[str] | None]:
    """``{package: allowed packages}`` (None for ``*``) from the table under ``HEADER``."""
    lines = text.splitlines()
    if HEADER not in lines:
        raise AssertionError(f"{DOC.relative_to(ROOT)} has no import table (a line {HEADER!r})")
    table = {}
    for line in lines[lines.index(HEADER) + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3:
            raise AssertionError(f"{DOC.relative_to(ROOT)}: import table row {line!r} does not have 3 cells")
        name = cells[0].strip("`")
        allowed = cells[2]
        if allowed == "`*`":
            table[name] = None
        else:
            short = re.findall(r"`([A-Za-z_][\w.]*)`", allowed)
            table[name] = {s if s == "jaxrec" else f"jaxrec.{s}" for s in short}
    return table


def package_of(module: str, rows) -> str | None:
    """The row a module belongs to: the longest row name equal to or above it."""
    best = None
    for name in rows:
        if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best)):
            best = name
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path):
    """``(line, module)`` for every jaxrec module a file imports (also inside functions);
    ``from jaxrec import x`` counts as ``jaxrec.x`` when ``x`` is a module or package."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jaxrec":
                    yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "jaxrec":
                for alias in node.names:
                    is_module = (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").exists()
                    yield node.lineno, f"jaxrec.{alias.name}" if is_module else "jaxrec", []
            elif node.module.split(".")[0] == "jaxrec":
                yield node.lineno, node.module, [alias.name for alias in node.names]


def top_level_packages() -> set[str]:
    names = {"jaxrec"}
    for entry in PACKAGE.iterdir():
        if entry.is_dir() and (entry / "__init__.py").exists():
            names.add(f"jaxrec.{entry.name}")
        elif entry.suffix == ".py" and entry.name != "__init__.py":
            names.add(f"jaxrec.{entry.stem}")
    return names


@pytest.fixture(scope="module")
def table():
    return read_table(DOC.read_text())


def test_every_package_has_a_row_and_every_row_a_package(table):
    doc = DOC.relative_to(ROOT)
    for name in sorted(top_level_packages()):
        assert name in table, (
            f"{name} has no row in the import table of {doc}: add "
            f"'| `{name}` | what it owns | the packages it may import |' in its place in the one-way order")
    for name in table:
        path = PACKAGE.joinpath(*name.split(".")[1:])
        exists = name == "jaxrec" or path.is_dir() or path.with_suffix(".py").exists()
        assert exists, f"the import table of {doc} has a row for {name}, which does not exist: remove the row"
        for allowed in table[name] or ():
            assert allowed in table, (
                f"row `{name}` of the import table in {doc} allows `{allowed}`, which has no row of its own")


def test_every_import_between_packages_is_allowed_by_the_table(table):
    doc = DOC.relative_to(ROOT)
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = package_of(module_name(path), table)
        allowed = table[own]
        for line, module, _ in imported_modules(path):
            target = package_of(module, table)
            if target is None:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}, which is in no row of the "
                                f"import table in {doc}: add a row for its package")
            elif target != own and allowed is not None and target not in allowed:
                short = target.removeprefix("jaxrec.")
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}, which row `{own}` of the import "
                                f"table in {doc} does not allow: move the code, or add `{short}` to that row's "
                                "'may import' cell if the imports still run one way")
    assert not problems, "\n".join(problems)


def test_the_table_runs_one_way(table):
    explicit = {name: allowed for name, allowed in table.items() if allowed is not None}

    def visit(name, path):
        if name in path:
            cycle = " -> ".join(path[path.index(name):] + [name])
            raise AssertionError(f"the import table in {DOC.relative_to(ROOT)} allows a cycle: {cycle}")
        for allowed in explicit.get(name, ()):
            visit(allowed, path + [name])

    for name in explicit:
        visit(name, [])
    # A `*` row may import anything, so nothing may import it.
    for star in (name for name, allowed in table.items() if allowed is None):
        importers = [name for name, allowed in explicit.items() if star in allowed]
        assert not importers, f"rows {importers} allow importing `{star}`, whose row allows `*`"


def test_no_package_imports_another_packages_private_parts(table):
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = package_of(module_name(path), table)
        for line, module, names in imported_modules(path):
            target = package_of(module, table)
            if target in (None, own):
                continue
            private = [part for part in module.split(".")[len(target.split(".")):] if part.startswith("_")]
            private += [name for name in names if name.startswith("_") and name != "__version__"]
            if private:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module} {names or ''}: private to "
                                f"{target}; export a public name from {target} instead")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_what_it_should():
    # The parser and the rules on a hand-made table: an unlisted import, a cycle, a `*` row.
    text = "\n".join([HEADER, "| --- | --- | --- |", "| `jaxrec.a` | x | — |",
                      "| `jaxrec.b` | y | `a` |", "| `jaxrec.cli` | z | `*` |", "", "after"])
    table = read_table(text)
    assert table == {"jaxrec.a": set(), "jaxrec.b": {"jaxrec.a"}, "jaxrec.cli": None}
    assert package_of("jaxrec.b._x.y", table) == "jaxrec.b" and package_of("jaxrec.c", table) is None
    cyclic = read_table(text.replace("| x | — |", "| x | `b` |"))
    with pytest.raises(AssertionError, match="cycle: jaxrec.a -> jaxrec.b -> jaxrec.a"):
        test_the_table_runs_one_way(cyclic)
