"""Fuzzing the decoder with damaged and crafted streams.

    python benchmarks/fuzz.py [--n 10000] [--seed 0] [--workers 2] [--timeout 60] [--full-every 10]
                              [--memory-gb 12] [--max-pixels 1048576] [--save DIR] [--json]

Every golden stream in ``tests/data`` (one per released model, some with text) is mutated:

- ``container``: bit flips, byte runs, truncations and insertions anywhere in the stream, CRCs
  left as they are (the container's own checks must catch them);
- ``payload``: the same damage inside one section (head, hyper-latent, latent or text), with
  the section's CRC recomputed so the damage reaches the payload decoders;
- ``head``: a head rebuilt from random field values (sizes, rate level, start step, seed, gain,
  scale, trailing fields), CRC recomputed;
- ``swap``: a section replaced by the same section of another golden stream.

Each stream is decoded in a worker process under a memory limit (``RLIMIT_AS``) and a timeout:
every ``--full-every``-th with ``codec.decode`` to pixels, the others through what a hostile
stream can reach (the container and head checks, the entropy decoders of the hyper-latent,
latent and text), since the networks after them only see tensors of the checked geometry. Outcomes: ``ok`` (decoded), ``refused`` (``BitstreamError``),
and the failures: ``unclean`` (any other exception), ``crash`` (the worker died), ``hang`` (no
answer within the timeout). The decode pixel cap is lowered to ``--max-pixels`` so that a head
which claims a larger image within the default cap does not make every decode take minutes;
the cap itself is tested separately. The memory limit must fit a legal decode at that cap
(a 6 GB limit failed a legal 1000x1000 stream in a 50k run: a harness mismatch, not a finding). ``--save DIR`` keeps each failing stream for replay.
Exits 1 when any decode failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codec.bitstream import MODEL_ID_BYTES, frame, read_varint, write_varint  # noqa: E402

FAILURES = ("unclean", "crash", "hang")
KINDS = ("container", "payload", "head", "swap")


def sections(data: bytes) -> list[tuple[bytes, bytes]]:
    """A well-formed stream's (tag, payload) pairs."""
    out, pos = [], 5
    for _ in range(data[4]):
        length, start = read_varint(data, pos + 1)
        out.append((data[pos : pos + 1], data[start : start + length]))
        pos = start + length + 4
    return out


def damage(rng: random.Random, data: bytes) -> bytes:
    """One random damage: bit flips, a byte run, a truncation or an insertion."""
    b = bytearray(data)
    op = rng.choice(("flip", "run", "truncate", "insert"))
    if op == "flip" or not b and op != "insert":
        for _ in range(rng.randint(1, 8)):
            if b:
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
    elif op == "run":
        i = rng.randrange(len(b))
        n = rng.randint(1, max(1, len(b) - i))
        fill = rng.choice((b"\x00", b"\xff", bytes([rng.randrange(256)]), None))
        b[i : i + n] = bytes(rng.randrange(256) for _ in range(n)) if fill is None else fill * n
    elif op == "truncate":
        del b[rng.randrange(len(b)) :]
    else:
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(b)


def random_head(rng: random.Random, head: bytes) -> bytes:
    """The golden head's preset and model id, then 5 to 8 varints of random size."""
    n = head[0]
    keep = head[: 1 + n + MODEL_ID_BYTES]
    big = lambda: rng.choice((0, 1, rng.randrange(256), rng.randrange(1 << 16), rng.randrange(1 << 32),  # noqa: E731
                              rng.randrange(1 << 63), 999, 1000, 1 << 20, (1 << 20) + 1))  # fmt: skip
    small = lambda: rng.choice((0, 1, 2, 8, 9, 64, 127, 128, rng.randrange(1 << 16)))  # noqa: E731
    fields = [rng.choice((big(), rng.randrange(1, 512))), rng.choice((big(), rng.randrange(1, 512))),
              rng.choice((big(), rng.randrange(80))), big(), big()]  # fmt: skip
    fields += [small() for _ in range(rng.choice((0, 0, 1, 2, 3)))]
    return keep + b"".join(write_varint(v) for v in fields)


def mutate(rng: random.Random, corpus: list[bytes]) -> tuple[str, bytes]:
    data = rng.choice(corpus)
    kind = rng.choice(KINDS)
    if kind == "container":
        return kind, damage(rng, data)
    parts = sections(data)
    i = rng.randrange(len(parts))
    tag, payload = parts[i]
    if kind == "payload":
        parts[i] = (tag, damage(rng, payload))
    elif kind == "head":
        parts[0] = (parts[0][0], random_head(rng, parts[0][1]))
    else:
        donor = dict(sections(rng.choice(corpus)))
        parts[i] = (tag, donor.get(tag, payload))
    return kind, frame(parts)


def _worker(conn, memory_bytes: int, max_pixels: int, decoder: str, steps: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    import torch

    torch.set_num_threads(1)
    import codec
    from codec.bitstream import BitstreamError

    from codec.parsing import parse
    from codec.text_coding import decode_text

    conn.send("ready")
    while (msg := conn.recv()) is not None:
        data, full = msg
        try:
            if full:
                codec.decode(data, decoder=decoder, steps=steps, max_pixels=max_pixels)
            else:  # what a hostile stream reaches: the checks and the entropy decoders
                s, p = parse(data, max_pixels=max_pixels)
                z_shape = p.z_shape(*s.header.coded_size)
                p.latent_codec.decompress_symbols([s.latent], [s.hyper_latent], z_shape, s.header.rate_level)
                decode_text(s.text, p.text_model)
            conn.send(("ok", ""))
        except BitstreamError as e:
            conn.send(("refused", str(e).split(":")[0][:60]))
        except Exception as e:  # noqa: BLE001 - what the fuzzer looks for
            conn.send(("unclean", f"{type(e).__name__}: {e}"[:300]))


class Worker:
    """A decoding process, restarted after a crash or a hang."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        a = self.args
        self.proc = ctx.Process(target=_worker, args=(child, int(a.memory_gb * 2**30), a.max_pixels, a.decoder, a.steps),
                                daemon=True)  # fmt: skip
        self.proc.start()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError("a fuzz worker did not start")

    def send(self, data: bytes, full: bool) -> None:
        self.sent = time.monotonic()
        self.conn.send((data, full))

    def result(self) -> tuple[str, str] | None:
        """The outcome once there is one, else None (still decoding)."""
        try:
            if self.conn.poll(0):
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        if not self.proc.is_alive():
            code = self.proc.exitcode
            self._start()
            return "crash", f"worker exit code {code}"
        if time.monotonic() - self.sent > self.args.timeout:
            self.proc.kill()
            self.proc.join()
            self._start()
            return "hang", f"no answer in {self.args.timeout} s"
        return None

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def run(args: argparse.Namespace) -> dict:
    corpus = [p.read_bytes() for p in sorted((ROOT / "tests" / "data").glob("*.rsl"))]
    rng = random.Random(args.seed)
    workers = [Worker(args) for _ in range(args.workers)]
    outcomes: Counter = Counter()
    reasons: Counter = Counter()
    failures: list[dict] = []
    busy: dict[int, tuple[int, str, bytes]] = {}
    next_case, done, t0 = 0, 0, time.monotonic()
    try:
        while done < args.n:
            for w_i, w in enumerate(workers):
                if w_i not in busy and next_case < args.n:
                    kind, data = mutate(rng, corpus)
                    busy[w_i] = (next_case, kind, data)
                    w.send(data, next_case % args.full_every == 0)
                    next_case += 1
            progressed = False
            for w_i, (case, kind, data) in list(busy.items()):
                res = workers[w_i].result()
                if res is None:
                    continue
                outcome, detail = res
                outcomes[(kind, outcome)] += 1
                if outcome == "refused":
                    reasons[detail] += 1
                if outcome in FAILURES:
                    failures.append({"case": case, "kind": kind, "outcome": outcome, "detail": detail})
                    if args.save:
                        Path(args.save).mkdir(parents=True, exist_ok=True)
                        (Path(args.save) / f"{case:07d}-{outcome}.rsl").write_bytes(data)
                del busy[w_i]
                done += 1
                progressed = True
            if not progressed:
                time.sleep(0.002)
    finally:
        for w in workers:
            w.close()
    wall = time.monotonic() - t0
    totals = Counter()
    for (_, outcome), n in outcomes.items():
        totals[outcome] += n
    return {
        "n": args.n, "seed": args.seed, "corpus": len(corpus), "wall_seconds": round(wall, 1),
        "totals": {o: totals.get(o, 0) for o in ("ok", "refused", *FAILURES)},
        "by_kind": {k: {o: outcomes.get((k, o), 0) for o in ("ok", "refused", *FAILURES)} for k in KINDS},
        "top_refusals": reasons.most_common(12), "failures": failures[:50],
    }  # fmt: skip


def table(r: dict) -> str:
    cols = ("ok", "refused", *FAILURES)
    lines = [f"{r['n']} mutated streams from {r['corpus']} golden streams, seed {r['seed']}, {r['wall_seconds']} s",
             "", f"| kind | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]  # fmt: skip
    for k, row in [*r["by_kind"].items(), ("all", r["totals"])]:
        lines.append(f"| {k} | " + " | ".join(str(row[c]) for c in cols) + " |")
    lines += ["", "most frequent refusals:"] + [f"  {n:>7}  {why}" for why, n in r["top_refusals"]]
    lines += [f"FAILED case {f['case']} ({f['kind']}): {f['outcome']}: {f['detail']}" for f in r["failures"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="how many mutated streams to decode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a decode may take before it counts as a hang")
    ap.add_argument("--memory-gb", type=float, default=12.0,
                    help="each worker's address-space limit: a legal 1 Mpx full decode with the preset's cached "
                         "decoders (codec.presets.PLAIN_DECODERS_KEPT) reaches 6 GB of address space")
    ap.add_argument("--max-pixels", type=int, default=1 << 20, help="the decoders' pixel cap")
    ap.add_argument("--decoder", default="auto", choices=("auto", "cdm", "plain"))
    ap.add_argument("--steps", type=int, default=1, help="CDM steps (1: the fastest decode through every stage)")
    ap.add_argument("--full-every", type=int, default=10,
                    help="every Kth stream is decoded to pixels; the others stop after the entropy decoders")
    ap.add_argument("--save", help="a folder for the streams whose decode failed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = run(args)
    print(json.dumps(r) if args.json else table(r))
    return 1 if any(r["totals"][f] for f in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())
