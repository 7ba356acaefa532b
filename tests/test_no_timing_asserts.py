"""No unit test asserts a wall-clock duration (``assert time.perf_counter() - start < 10``,
``elapsed = ...; assert elapsed < 10``): such a bound fails on a busy shared machine and proves
nothing on a fast one. Timings live in benchmarks/ (benchmarks/unit_timings.py). A deadline
that only stops a wait loop (``assert time.time() < deadline``) is not a duration bound."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CLOCKS = {"time", "perf_counter", "monotonic", "perf_counter_ns", "monotonic_ns", "time_ns"}


def _reads_clock(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute | ast.Name)
               and (n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id) in CLOCKS
               for n in ast.walk(node))


def _is_duration(node: ast.AST, durations: set[str]) -> bool:
    """A clock difference, or a name that was assigned one."""
    if isinstance(node, ast.Name):
        return node.id in durations
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and _reads_clock(node)


def timing_asserts(source: str) -> list[int]:
    """Lines of the asserts that compare a duration with a number."""
    tree = ast.parse(source)
    durations = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and _is_duration(n.value, set()) for t in n.targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            sides = [cmp.left, *cmp.comparators]
            if any(_is_duration(s, durations) for s in sides) and \
                    any(isinstance(s, ast.Constant) for s in sides):
                found.append(node.lineno)
    return found


def test_the_detector_tells_bounds_from_deadlines():
    src = ("def f():\n"
           "    start = time.perf_counter()\n"
           "    assert time.perf_counter() - start < 10\n"
           "    elapsed = time.perf_counter() - start\n"
           "    assert 0 < value and elapsed < 10.0\n"
           "    assert proc.poll() is None and time.time() < deadline\n"
           "    assert time.monotonic() < end, 'waited too long'\n")
    assert timing_asserts(src) == [3, 5]


def test_no_test_asserts_a_wall_clock_duration():
    found = {f"{p.relative_to(TESTS)}:{line}" for p in sorted(TESTS.rglob("*.py"))
             for line in timing_asserts(p.read_text())}
    assert not found, f"wall-clock asserts (move them to benchmarks/): {sorted(found)}"
