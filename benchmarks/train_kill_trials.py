"""SIGKILL `modeconn train` at random moments (before any file exists, as soon as the output
directory appears, while a file is being written, at random), resume with the same command line
plus --resume, and compare every file with an uninterrupted run (tensors of every safetensors
file, metrics.csv without its wall-clock column, every other file but env.json byte for byte).

    python benchmarks/train_kill_trials.py OUT_DIR [TRIALS=12] [SEED=0]
"""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PY = sys.executable
CMDS = {
    "mlp-group": ["train", "--width", "64", "--epochs", "8", "--optimizer", "adam", "--lr", "0.001",
                  "--shift", "iid:50,50", "--init", "different", "--save-epochs", "4", "--quiet",
                  "--device", "cpu"],
    "convnet-dropout": ["train", "--model", "convnet", "--width", "0.25", "--epochs", "4",
                        "--save-epochs", "2", "--quiet", "--device", "cpu"],
}
ROOT = Path(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 12
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 0)


def digest(d: Path) -> dict:
    out = {}
    for p in sorted(d.rglob("*")):
        if not p.is_file() or p.name == "env.json":
            continue
        rel = str(p.relative_to(d))
        if p.suffix == ".safetensors":
            t = load_file(p)
            h = hashlib.sha256()
            for k in sorted(t):
                h.update(k.encode())
                h.update(t[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            out[rel] = h.hexdigest()
        elif p.name == "metrics.csv":  # every column but the wall-clock seconds
            lines = [",".join(l.split(",")[:-1]) for l in p.read_text().splitlines()]
            out[rel] = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run(cmd, out, *extra):
    return subprocess.run([PY, "-m", "modeconn", *cmd, "--out", str(out), *extra], env=ENV,
                          capture_output=True, text=True, timeout=600)


refs = {}
for name, cmd in CMDS.items():
    t0 = time.monotonic()
    r = run(cmd, ROOT / f"ref-{name}")
    dt = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    refs[name] = (digest(ROOT / f"ref-{name}"), dt)
    print(f"# reference {name}: {dt:.1f} s, {len(refs[name][0])} files", flush=True)

rows = []
for i in range(N):
    name = list(CMDS)[(i // 4) % len(CMDS)]
    cmd = CMDS[name]
    out = ROOT / f"trial{i}"
    mode = ["early", "first-file", "tmp", "random"][i % 4]
    delay = rng.uniform(0, 0.5) if mode == "early" else rng.uniform(0.5, refs[name][1] * 0.9)
    t0 = time.monotonic()
    p = subprocess.Popen([PY, "-m", "modeconn", *cmd, "--out", str(out)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if mode == "first-file":  # kill as soon as the output directory appears
        while p.poll() is None and not out.exists():
            pass
    elif mode == "tmp":  # kill as soon as a file is being written (its temporary exists)
        start_look = t0 + rng.uniform(0.5, refs[name][1] * 0.8)
        while p.poll() is None:
            if time.monotonic() >= start_look and out.is_dir() and any(
                    q.name.endswith(".tmp") for q in out.rglob(".*")):
                break
    else:
        while p.poll() is None and time.monotonic() - t0 < delay:
            time.sleep(0.002)
    killed_at = time.monotonic() - t0
    finished = p.poll() is not None
    p.send_signal(signal.SIGKILL)
    p.wait()
    files = sorted(str(q.relative_to(out)) for q in out.rglob("*") if q.is_file()) \
        if out.exists() else []
    tmp = [f for f in files if f.rsplit("/", 1)[-1].startswith(".") and f.endswith(".tmp")]
    r = run(cmd, out, "--resume")
    ok = r.returncode == 0
    leftover = [str(q) for q in out.rglob("*.tmp")]
    got = digest(out) if ok else {}
    same = ok and got == refs[name][0] and not leftover
    if ok and not same:
        print("  differ:", sorted(k for k in set(got) | set(refs[name][0])
                                  if got.get(k) != refs[name][0].get(k)), leftover)
    note = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    rows.append((i, name, mode, f"{killed_at:.2f}", "finished" if finished else "killed",
                 len(files), "config.json" in files, len(tmp), ok, same, note[:60]))
    print(" | ".join(map(str, rows[-1])), flush=True)
print("identical:", sum(r[9] for r in rows), "/", len(rows))
