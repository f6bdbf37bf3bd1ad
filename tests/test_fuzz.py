"""The decoder under fuzzing (benchmarks/fuzz.py): a few hundred damaged and crafted streams,
each decoded in a worker under a memory limit; no crash, hang or exception other than
BitstreamError. The closing notes report the 100,000-stream run."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_few_hundred_mutated_streams_decode_or_are_refused_cleanly(tmp_path):
    res = subprocess.run([sys.executable, "benchmarks/fuzz.py", "--n", "300", "--seed", "7", "--full-every", "15",
                          "--timeout", "120", "--save", str(tmp_path), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    report = json.loads(res.stdout)
    assert res.returncode == 0, report["failures"]
    totals = report["totals"]
    assert totals["unclean"] == totals["crash"] == totals["hang"] == 0 and not list(tmp_path.iterdir())
    assert sum(totals.values()) == 300
    # the damage reached the payload decoders: resealed streams decoded, and some were refused there
    assert report["by_kind"]["payload"]["ok"] > 0 and report["by_kind"]["head"]["refused"] > 0
    assert any(why.startswith(("text section", "bitstream section")) or "rate level" in why
               for why, _ in report["top_refusals"])  # fmt: skip


def test_mutations_are_reproducible():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import random

    import fuzz

    corpus = [p.read_bytes() for p in sorted((ROOT / "tests" / "data").glob("*.rsl"))]
    rng_a, rng_b = random.Random(3), random.Random(3)
    a = [fuzz.mutate(rng_a, corpus) for _ in range(20)]
    assert a == [fuzz.mutate(rng_b, corpus) for _ in range(20)] and len({m for _, m in a}) > 10
    assert fuzz.sections(fuzz.frame(fuzz.sections(corpus[0]))) == fuzz.sections(corpus[0])
    assert fuzz.frame(fuzz.sections(corpus[0])) == corpus[0]
