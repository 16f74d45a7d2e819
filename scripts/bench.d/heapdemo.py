"""A Python heap worth looking at: objects of many sizes, a third of them
freed at random, then the allocator's JSON statistics written to argv[1].
Run under the allocator:

    PYTHONMALLOC=malloc LD_PRELOAD=target/release/libpymalloc.so \
        python3 scripts/bench.d/heapdemo.py stats.json
"""
import ctypes
import os
import random
import sys

random.seed(6)
keep = []
for i in range(60000):
    kind = random.random()
    if kind < 0.55:
        keep.append("x" * random.randint(1, 200))          # small strings
    elif kind < 0.85:
        keep.append(list(range(random.randint(1, 60))))    # small and medium lists
    elif kind < 0.995:
        keep.append(bytearray(random.randint(600, 30000)))  # medium buffers
    else:
        keep.append(bytearray(random.randint(200000, 600000)))  # large mappings
for i in random.sample(range(len(keep)), len(keep) // 3):
    keep[i] = None

lib = ctypes.CDLL(None)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
if lib.pymalloc_write_stats(fd, b"json") != 0:
    sys.exit("pymalloc_write_stats failed: is libpymalloc loaded?")
os.close(fd)
