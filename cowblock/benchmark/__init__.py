"""Side-by-side benchmark of cowblock against qcow2 (qemu) and a raw file.

This is the engine behind ``cowblock bench`` and ``bench/test_compare.py``.  It runs the
workloads of DESIGN.md section 8 / issue 4 for cowblock and for each installed peer **in the
same run, interleaved per repetition** (A, B, C, A, B, C, ...), so that a noisy shared machine
hurts every engine alike.  Every figure is the median of ``--repeat`` runs; every ratio is
computed pair by pair within one repetition, then the median of those ratios is taken.

Workloads (``--only`` takes these keys), one module each:

W1   :mod:`.copyup`      4 KiB copy-up writes into a fresh snapshot of a full device, + flush
W2   :mod:`.sequential`  sequential full-block (1 MiB) copy-up over the whole snapshot, + flush
W3   :mod:`.chains`      reads of the whole device through snapshot chains of depth 1 ... 1000
W4   :mod:`.snapshots`   snapshot cost against device size and mapped data
W5   :mod:`.percall`     Python per-call cost against os.pread/os.preadv; read_blocks per block
MEM  :mod:`.memory`      resident memory growth and metadata bytes per mapped block

The peers (qcow2 through ``qemu-img bench``/``qemu-io``, raw files through qemu-img bench and
plain Python loops) are in :mod:`.peers`; :mod:`.runner` times a group of engines, interleaved;
:mod:`.goals` and :mod:`.report` turn the groups into the goals, the tables, JSON and a chart;
:mod:`.command` is the command line.

Random patterns: ``qemu-img bench`` can only step through an image, so the "random" patterns
are scattered sequences ``offset_k = (k * P) mod size`` that qemu-img bench generates itself
(it wraps offsets modulo the image size, checked at start-up).  P is an odd multiple of the IO
size picked so that the sequence touches as many distinct blocks as a truly random sample
would (W1), or visits every block exactly once (W3).  cowblock and the Python loops use the
very same offsets.  (``qemu-io`` would allow any offsets but costs ~40-60 us per command,
which would swamp what is being measured.)

Timing of ``qemu-img bench``: it stops its clock when the last request completes, before the
image is flushed and closed, so for write tests we add the time from its "Run completed" line
to the exit of the process, which is the final flush (a clean close costs about 2 ms).
"""

from .command import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
