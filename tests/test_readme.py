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


NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
JOBS = re.compile(r"\b(\d+|" + "|".join(NUMBER_WORDS) + r") jobs\b", re.I)


def stated_jobs(text: str) -> list[int]:
    return [int(n) if n.isdigit() else NUMBER_WORDS[n.lower()] for n in JOBS.findall(text)]


def test_each_example_states_the_job_count_it_expands_to():
    """A job count in an example's comments, or beside its name in the README, is what the
    study expands to."""
    from modeconn.studies.spec import load

    examples = README.parent / "examples"
    counts = {p.name: len(load(p).jobs) for p in sorted(examples.glob("*.toml"))}
    checked = 0
    for name, n in counts.items():
        comments = "\n".join(line.split("#", 1)[1] for line in
                             (examples / name).read_text().splitlines() if "#" in line)
        for stated in stated_jobs(comments):
            assert stated == n, f"examples/{name} says {stated} jobs; it expands to {n}"
            checked += 1
    for name, aside in re.findall(r"`([\w-]+\.toml)` \(([^()]*)\)", README.read_text()):
        for stated in stated_jobs(aside) if name in counts else []:
            assert stated == counts[name], f"README says {name} makes {stated} jobs, not {counts[name]}"
            checked += 1
    assert checked >= 3  # lmc.toml twice (its comment, the README) and demo.toml's "ten jobs"


def test_readme_transformers_example_runs(capsys):
    import pytest

    pytest.importorskip("transformers")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "GPT(vocab_size" in b]
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 — our own README
    printed = capsys.readouterr().out
    assert "blocks.0.attn.k.heads" in printed and "bert.embeddings.word_embeddings" in printed
