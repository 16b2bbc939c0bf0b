"""`cargo xtask bench search`: our TPE (through `xtask search ask-tell`) against Optuna's default
TPESampler and random search, on standard test functions, over many seeds, in the same run.

Prints a Markdown table of the median best value after 20, 30 and 50 trials (lower is better).
Run by the benchmark, never by tests.
"""

import argparse
import json
import math
import statistics
import subprocess
import tempfile

import optuna
from scipy.stats import mannwhitneyu

optuna.logging.set_verbosity(optuna.logging.WARNING)

H6_A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
H6_P = [[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]]
H6_ALPHA = [1.0, 1.2, 3.0, 3.2]


def branin(p):
    x, y = p["x"], p["y"]
    return (y - 5.1 / (4 * math.pi**2) * x**2 + 5 / math.pi * x - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10


def hartmann6(p):
    x = [p[f"x{i}"] for i in range(6)]
    total = 0.0
    for i in range(4):
        inner = sum(H6_A[i][j] * (x[j] - H6_P[i][j] * 1e-4) ** 2 for j in range(6))
        total -= H6_ALPHA[i] * math.exp(-inner)
    return total


def rosenbrock4(p):
    x = [p[f"x{i}"] for i in range(4)]
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(3))


def mixed(p):
    # log-scale float, stepped int, categorical: minimum 0 at lr=1e-3, layers=6, act=gelu.
    act = {"relu": 0.5, "gelu": 0.0, "tanh": 1.0}[p["act"]]
    return (math.log10(p["lr"]) + 3) ** 2 + 0.1 * (p["layers"] - 6) ** 2 + act


def notebook(p):
    # The notebook's space (a log-uniform learning rate, a batch size of 16 or 32) with a
    # validation-loss-shaped objective: best near lr = 3e-5 at batch 16, the larger batch
    # preferring a larger rate and ending a little worse.
    lr, batch = p["learning_rate"], p["batch_size"]
    center = math.log10(3e-5 if batch == 16 else 4.5e-5)
    return 0.3 + 8 * (math.log10(lr) - center) ** 2 + (0.01 if batch == 32 else 0.0)


PROBLEMS = {
    "branin": (branin, [{"name": "x", "type": "float", "low": -5, "high": 10}, {"name": "y", "type": "float", "low": 0, "high": 15}]),
    "hartmann6": (hartmann6, [{"name": f"x{i}", "type": "float", "low": 0, "high": 1} for i in range(6)]),
    "rosenbrock4": (rosenbrock4, [{"name": f"x{i}", "type": "float", "low": -2, "high": 2} for i in range(4)]),
    "mixed": (mixed, [
        {"name": "lr", "type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        {"name": "layers", "type": "int", "low": 1, "high": 12, "step": 1},
        {"name": "act", "type": "categorical", "choices": ["relu", "gelu", "tanh"]},
    ]),
    "notebook": (notebook, [
        {"name": "learning_rate", "type": "float", "low": 1e-5, "high": 5e-5, "log": True},
        {"name": "batch_size", "type": "categorical", "choices": [16, 32]},
    ]),
}


def suggest(trial, spec):
    out = {}
    for s in spec:
        if s["type"] == "float":
            out[s["name"]] = trial.suggest_float(s["name"], s["low"], s["high"], log=s.get("log", False))
        elif s["type"] == "int":
            out[s["name"]] = trial.suggest_int(s["name"], s["low"], s["high"], step=s.get("step", 1))
        else:
            out[s["name"]] = trial.suggest_categorical(s["name"], s["choices"])
    return out


def run_optuna(fn, spec, seed, n, sampler):
    study = optuna.create_study(sampler=sampler(seed))
    values = []
    for _ in range(n):
        t = study.ask()
        v = fn(suggest(t, spec))
        study.tell(t, v)
        values.append(v)
    return values


def run_ours(exe, fn, spec, seed, n, sampler):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        path = f.name
    proc = subprocess.Popen(
        [exe, "search", "ask-tell", "--space", path, "--trials", str(n), "--seed", str(seed),
         "--direction", "minimize", "--sampler", sampler],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
    )
    values = []
    for _ in range(n):
        asked = json.loads(proc.stdout.readline())
        v = fn(asked["params"])
        values.append(v)
        proc.stdin.write(json.dumps({"trial": asked["trial"], "value": v}) + "\n")
        proc.stdin.flush()
    proc.stdout.readline()
    proc.wait()
    return values


def best_after(values, k):
    return min(values[:k])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--exe", required=True)
    parser.add_argument("--seeds", type=int, default=30)
    args = parser.parse_args()
    sides = {
        "ours TPE": lambda fn, spec, seed: run_ours(args.exe, fn, spec, seed, 50, "tpe"),
        "Optuna TPE": lambda fn, spec, seed: run_optuna(fn, spec, seed, 50, lambda s: optuna.samplers.TPESampler(seed=s)),
        "ours random": lambda fn, spec, seed: run_ours(args.exe, fn, spec, seed, 50, "random"),
        "Optuna random": lambda fn, spec, seed: run_optuna(fn, spec, seed, 50, lambda s: optuna.samplers.RandomSampler(seed=s)),
    }
    print(f"optuna {optuna.__version__}; median over {args.seeds} seeds of the best value after 20 / 30 / 50 trials (lower is better)")
    print("| problem | " + " | ".join(sides) + " | p (ours TPE worse than Optuna TPE), 20 / 30 / 50 |")
    print("|---|" + "---|" * (len(sides) + 1))
    for name, (fn, spec) in PROBLEMS.items():
        cells = []
        bests = {}
        for label, side in sides.items():
            runs = [side(fn, spec, seed) for seed in range(args.seeds)]
            bests[label] = {k: [best_after(r, k) for r in runs] for k in (20, 30, 50)}
            medians = [statistics.median(bests[label][k]) for k in (20, 30, 50)]
            cells.append(" / ".join(f"{m:.4g}" for m in medians))
        # One-sided Mann-Whitney: small p means ours is significantly worse than Optuna's.
        p_values = [
            mannwhitneyu(bests["ours TPE"][k], bests["Optuna TPE"][k], alternative="greater").pvalue
            for k in (20, 30, 50)
        ]
        cells.append(" / ".join(f"{p:.2f}" for p in p_values))
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
