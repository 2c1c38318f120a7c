"""TP against BPTT for the GRU of examples/gru_copy_memory.py on copy memory (delay 5): one JSON line per seed.

Run from the repository root:
    python docs/results/gru_copy_memory/measure.py SEEDS BATCHES [JSON of extra main() options]
e.g. ``... measure.py 0,1,2 12000`` or ``... measure.py 0,1,2 12000 '{"gates": "gradient", "methods": ["tp"]}'``.
Progress lines (starting with ``[``) are printed too; the JSON lines start with ``{``.
"""
import json
import sys
import time

sys.path.insert(0, "examples")
import gru_copy_memory as m  # noqa: E402

seeds = [int(s) for s in sys.argv[1].split(",")]
batches = int(sys.argv[2])
extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
for seed in seeds:
    t = time.perf_counter()
    out = m.main(delay=5, batches=batches, every=1000, seed=seed, val_batches=25, **extra)
    rec = {"seed": seed, "batches": batches, "extra": extra, "wall_s": time.perf_counter() - t, "history": out}
    print(json.dumps(rec), flush=True)
