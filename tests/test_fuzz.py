"""The fuzz table (tests/fuzz_cases.py): every hostile or nonsense invocation fails with one clear
line, no traceback, no hang, no input file changed and nothing left behind."""

import pytest

from fuzz_cases import build_world, cases, run_case, snapshot


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return root, build_world(root)


def test_every_hostile_invocation_fails_cleanly(world, tmp_path):
    root, w = world
    outs = tmp_path / "outs"
    outs.mkdir()
    table = cases(w, outs)
    assert len(table) >= 150 and len({c.id for c in table}) == len(table)
    before = snapshot(root)
    bad = []
    for case in table:
        r = run_case(case, root, outs, before)
        if not r.clear or r.hang or r.changed or r.left:
            bad.append(f"{case.id}: exit {r.exit_code}, clear {r.clear}, traceback {r.traceback}, hang {r.hang}, "
                       f"changed {r.changed[:3]}, left {r.left[:3]}\n    {' '.join(case.args)}\n    {r.output}")
        for p in list(outs.iterdir()):  # the next case starts from an empty output folder either way
            __import__("shutil").rmtree(p) if p.is_dir() else p.unlink()
        before = snapshot(root) if r.changed else before
    assert not bad, f"{len(bad)} of {len(table)} cases misbehave:\n" + "\n".join(bad)
