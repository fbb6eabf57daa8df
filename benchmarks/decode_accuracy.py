"""Decode accuracy and speed of every video backend on the decode-accuracy corpus.

Writes the corpus (mosic.data.stamped: every frame shows its own index; H.264 with B-frames
and a long or an open GOP, variable frame rate, MPEG-4 Part 2 in AVI, an AVI that
over-reports its frame count, a file whose first packets cannot be decoded), reads random
strided clips from each file with each backend, in shuffled order, alternating new and reused
readers, and prints one row per backend and file: the frame count it reports against the
frames that really decode, how many frames came back wrong (and the first), and ms per clip.
It then times the hang watchdog's cost (data.decode_timeout) on one file.

    python benchmarks/decode_accuracy.py                         # 96x160 frames, quick
    python benchmarks/decode_accuracy.py --height 480 --width 854 --json decode.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from mosic.data.decoders import available_backends
from mosic.data.stamped import CORPUS, audit_backend, reference_stamps, write_decode_corpus
from mosic.data.video_files import VideoFileSource


def watchdog_cost(path: Path, clips: int, num_frames: int, stride: int) -> dict:
    """ms per clip through one reused source, in-process and through the watchdog."""
    rng = np.random.default_rng(0)
    count = VideoFileSource([path]).num_frames(0)
    span = stride * (num_frames - 1) + 1
    starts = rng.integers(0, count - span + 1, size=clips)
    result = {}
    for label, timeout in (("in-process", None), ("watchdog", 60.0)):
        source = VideoFileSource([path], decode_timeout=timeout)
        source.read_frames(0, [0])  # start the child, index the file
        began = time.perf_counter()
        for start in starts:
            source.read_frames(0, [int(start) + stride * k for k in range(num_frames)])
        result[label] = 1000 * (time.perf_counter() - began) / clips
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--frames", type=int, default=240, help="frames per corpus file")
    parser.add_argument("--clips", type=int, default=40, help="random clips read per backend and file")
    parser.add_argument("--clip-frames", type=int, default=12)
    parser.add_argument("--stride", type=int, default=6)
    parser.add_argument("--backends", nargs="+", default=None, help="default: every backend that loads here")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # decord's InexactDecoderWarning: the table shows why
    backends = args.backends or available_backends()
    with tempfile.TemporaryDirectory(prefix="mosic-decode-") as tmp:
        files = write_decode_corpus(tmp, num_frames=args.frames, size=(args.height, args.width))
        rows = []
        print(f"corpus: {args.frames} frames of {args.width}x{args.height}; {args.clips} clips of {args.clip_frames} "
              f"frames, stride {args.stride}, per backend and file\n")  # fmt: skip
        print("| file | backend | frames reported / decodable | wrong frames | first wrong (asked -> got) | ms per clip |")
        print("|---|---|---:|---:|---|---:|")
        for name, path in files.items():
            reference = reference_stamps(path)
            for backend in backends:
                r = audit_backend(path, backend, clips=args.clips, num_frames=args.clip_frames, stride=args.stride, reference=reference)
                first = f"{r['wrong'][0][0]} -> frame {r['wrong'][0][2]}" if r["wrong"] else "-"
                exact = r["count"] == r["expected"] and not r["wrong"]
                print(f"| {CORPUS[name][0]} | {backend} | {r['count']} / {r['expected']} | {len(r['wrong'])} of {r['reads']} "
                      f"| {first} | {r['ms_per_clip']:.1f} |")  # fmt: skip
                rows.append({"file": name, "backend": backend, "exact": exact, **{k: v for k, v in r.items() if k != "wrong"},
                             "wrong_count": len(r["wrong"]), "first_wrong": r["wrong"][:1]})  # fmt: skip
        cost = watchdog_cost(files["h264-bframes-long-gop"], args.clips, args.clip_frames, args.stride)
    exact = {b: all(r["exact"] for r in rows if r["backend"] == b) for b in backends}
    print("\nexact on every file: " + ", ".join(f"{b}: {'yes' if ok else 'no'}" for b, ok in exact.items()))
    print(f"hang watchdog (pyav, {CORPUS['h264-bframes-long-gop'][0]}): {cost['in-process']:.1f} ms per clip in-process, "
          f"{cost['watchdog']:.1f} ms through the watchdog")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "rows": rows, "exact": exact, "watchdog_ms": cost}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
