"""The README's Python example on a user's own module runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_own_module_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    own = [b for b in blocks if "class Net(nn.Module)" in b]
    assert len(own) == 1, "README lost its own-module example"
    namespace: dict = {}
    exec(compile(own[0], str(README), "exec"), namespace)  # noqa: S102 — our own README
    printed = capsys.readouterr().out
    assert "'barrier'" in printed and "'trace'" in printed
    # The aligned copy is a permutation of b: same multiset of weights in every tensor.
    b, aligned = namespace["b"], namespace["b_aligned"]
    assert all(torch_equal_sorted(b[k], aligned[k]) for k in b)
    assert len(namespace["grid"]) == 25  # 5x5 grid, one split
    path = namespace["path"]
    for k, v in namespace["a"].items():  # the fitted curve keeps its endpoints exactly
        assert (path.point(0.0)[k] == v).all()


def torch_equal_sorted(u, v) -> bool:
    return bool((u.flatten().sort().values == v.flatten().sort().values).all())


def test_readme_jobs_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "jobs.run(\"train\"" in b]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 — our own README
    printed = capsys.readouterr().out
    assert "'barrier'" in printed and "test loss barrier" in printed
    assert len(namespace["rows"]) == 5 * 2 and namespace["config"].method == "wm"
    assert namespace["al"].permutation is not None
