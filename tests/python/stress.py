"""Threads, fork and dlopen at once, for tests/stress.rs (run under
LD_PRELOAD=libpymalloc.so with PYTHONMALLOC=malloc).

Four threads allocate (lists, dicts, strings, bytes, freed in other
threads through a queue); one thread imports every extension module of
the standard library one by one (each a dlopen); the main thread forks
in a loop (each child allocates, uses extension modules and exits) and
runs a multiprocessing pool with the fork start method whose workers are
replaced every few tasks (so they too are forked while all this runs).
Children do not import: a module another thread was importing at the
fork has its import lock held forever in the child (CPython's own
limitation, whatever the allocator). Any child that does not
finish within 10 seconds is a deadlock and fails the run. Every child,
and the parent at the end, checks the heap (pymalloc_check_heap()).
"""

import ctypes
import importlib
import json
import multiprocessing
import os
import queue
import sys
import sysconfig
import threading
import time
import warnings
import zlib

warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)

FORKS = 150
CHILD_TIMEOUT = 10.0
stop = threading.Event()
handoff = queue.Queue(maxsize=1000)
failures = []


# The library's heap walk (0: consistent), bound before any thread starts.
check_heap = ctypes.CDLL(None).pymalloc_check_heap


def fail(message):
    failures.append(message)
    print("FAIL", message, file=sys.stderr, flush=True)


def allocator(seed):
    import random

    rnd = random.Random(seed)
    kept = []
    while not stop.is_set():
        n = rnd.randrange(1, 3000)
        obj = {"k%d" % i: [i] * (n % 7) for i in range(n % 50)}
        kept.append((n, obj, b"x" * n, "y" * (n // 3)))
        if len(kept) > 200:
            item = kept.pop(rnd.randrange(len(kept)))
            try:
                handoff.put_nowait(item)
            except queue.Full:
                pass
        try:  # another thread's objects, checked and dropped here
            n2, obj2, b2, s2 = handoff.get_nowait()
            if len(b2) != n2 or len(s2) != n2 // 3 or len(obj2) != n2 % 50:
                fail("object handed between threads was corrupted")
        except queue.Empty:
            pass


def extension_modules():
    """Names of the standard library's extension modules, minus tests and
    modules that touch the terminal."""
    names = []
    for f in sorted(os.listdir(sysconfig.get_config_var("DESTSHARED"))):
        name = f.split(".")[0]
        if f.endswith(".so") and not name.startswith(("_test", "_xx", "xx", "_ctypes_test")) and name not in (
            "readline",
            "_curses",
            "_curses_panel",
            "ossaudiodev",
        ):
            names.append(name)
    return names


MODULES = extension_modules()
imported = []


def importer():
    for name in MODULES:
        try:
            importlib.import_module(name)
            imported.append(name)
        except ImportError:
            pass  # optional dependency missing
        time.sleep(0.01)


def wait_child(pid):
    deadline = time.monotonic() + CHILD_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            if os.waitstatus_to_exitcode(status) != 0:
                fail("child %d exited with status %#x" % (pid, status))
            return
        if time.monotonic() > deadline:
            fail("child %d did not finish within %s s: deadlocked" % (pid, CHILD_TIMEOUT))
            os.system("gdb -p %d -batch -nx -ex 'thread apply all bt' 1>&2 2>/dev/null" % pid)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return
        time.sleep(0.001)


def pool_work(n):
    return sum(len(str(i) * (n % 13)) for i in range(n))


def main():
    if len(MODULES) < 20:
        fail("only %d extension modules found" % len(MODULES))
    threads = [threading.Thread(target=allocator, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=importer))
    for t in threads:
        t.start()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2, maxtasksperchild=10) as pool:
        pending = pool.map_async(pool_work, range(200, 400), chunksize=1)
        for k in range(FORKS):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    data = [str(i) * (k % 5) for i in range(2000)]
                    text = json.dumps({"k": k, "data": data})
                    packed = zlib.compress(text.encode())
                    ok = json.loads(zlib.decompress(packed))["data"] == data
                    code = 0 if ok and check_heap() == 0 else 1
                except BaseException:
                    code = 1
                os._exit(code)
            wait_child(pid)
        expected = [pool_work(n) for n in range(200, 400)]
        try:
            if pending.get(timeout=60) != expected:
                fail("multiprocessing pool returned wrong results")
        except multiprocessing.TimeoutError:
            fail("multiprocessing pool did not finish within 60 s")
    stop.set()
    for t in threads:
        t.join()
    if len(imported) < 20:
        fail("only %d extension modules imported" % len(imported))
    if check_heap() != 0:
        fail("pymalloc_check_heap() found the heap inconsistent")
    if failures:
        sys.exit(1)
    print("stress done: %d forks, %d extension modules imported" % (FORKS, len(imported)))


if __name__ == "__main__":
    main()
