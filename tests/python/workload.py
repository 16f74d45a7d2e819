"""A deterministic allocation-heavy workload for tests/real_programs.rs.

Run it under glibc and under LD_PRELOAD=libpymalloc.so (with
PYTHONMALLOC=malloc, so every Python object comes from malloc): the single
output line "ok <sha256>" must be the same.
"""

import decimal
import hashlib
import json
import random
import re
import sqlite3
import sys
import threading

digest = hashlib.sha256()


def record(name, value):
    digest.update(name.encode())
    digest.update(repr(value).encode())


def check(cond, message):
    if not cond:
        print("FAIL", message, file=sys.stderr)
        sys.exit(1)


rng = random.Random(12345)

# json round trip of a large nested structure
def make(depth):
    if depth == 0:
        return rng.choice([rng.random(), rng.randrange(-10**12, 10**12), "s%06d" % rng.randrange(10**6), None, True])
    if rng.random() < 0.5:
        return [make(depth - 1) for _ in range(rng.randrange(1, 8))]
    return {"k%d" % i: make(depth - 1) for i in range(rng.randrange(1, 8))}

tree = [make(6) for _ in range(60)]
text = json.dumps(tree, sort_keys=True)
back = json.loads(text)
check(back == tree, "json round trip changed the data")
check(json.dumps(back, sort_keys=True) == text, "json re-encoding differs")
record("json", (len(text), hashlib.sha256(text.encode()).hexdigest()))

# sqlite3: an in-memory table of 100k rows, an index, aggregates
db = sqlite3.connect(":memory:")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL)")
db.executemany(
    "INSERT INTO t (grp, name, val) VALUES (?, ?, ?)",
    ((i % 97, "name-%d-%s" % (i, "x" * (i % 50)), (i * 7919 % 10007) / 13.0) for i in range(100_000)),
)
db.execute("CREATE INDEX t_grp ON t (grp)")
rows = db.execute(
    "SELECT grp, count(*), sum(length(name)), round(sum(val), 6) FROM t GROUP BY grp ORDER BY grp"
).fetchall()
check(len(rows) == 97 and sum(r[1] for r in rows) == 100_000, "sqlite aggregate is wrong")
top = db.execute("SELECT name FROM t WHERE grp = 5 ORDER BY val DESC, id LIMIT 3").fetchall()
record("sqlite", (rows, top))
db.close()

# decimal arithmetic with high precision
ctx = decimal.Context(prec=3000)
two = decimal.Decimal(2)
root = ctx.sqrt(two)
check(abs(ctx.multiply(root, root) - two) < decimal.Decimal("1e-2990"), "decimal sqrt(2) is wrong")
e = decimal.Decimal(0)
term = decimal.Decimal(1)
for n in range(1, 1200):
    e = ctx.add(e, term)
    term = ctx.divide(term, n)
check(str(e).startswith("2.718281828459045235360287"), "decimal e is wrong")
record("decimal", (str(root)[:2000], str(e)[:2000]))

# re on a large text
words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
big = " ".join("%s%d@%s.example" % (rng.choice(words), rng.randrange(1000), rng.choice(words)) for _ in range(200_000))
emails = re.findall(r"\b([a-z]+)(\d+)@([a-z]+)\.example\b", big)
check(len(emails) == 200_000, "re.findall found %d matches" % len(emails))
subbed = re.sub(r"(\d+)", lambda m: str(int(m.group(1)) * 2), big)
counts = {}
for w, _, d in emails:
    counts[(w, d)] = counts.get((w, d), 0) + 1
record("re", (len(subbed), hashlib.sha256(subbed.encode()).hexdigest(), sorted(counts.items())))

# a dict of 1M entries
d = {}
for i in range(1_000_000):
    d["key-%d" % i] = (i, i * i % 1_000_003)
check(len(d) == 1_000_000, "dict has %d entries" % len(d))
total = 0
for i in range(0, 1_000_000, 3):
    total += d["key-%d" % i][1]
for i in range(0, 1_000_000, 2):
    del d["key-%d" % i]
check(len(d) == 500_000, "dict has %d entries after deletes" % len(d))
record("dict", (total, sum(v[1] for v in d.values())))
del d

# threads allocating (lists, strings, bytes, dicts), checked per thread
results = [None] * 4

def worker(k):
    local = random.Random(k)
    acc = []
    h = hashlib.sha256()
    for i in range(40_000):
        item = {"i": i, "s": "t%d-%d" % (k, i) * (1 + local.randrange(5)), "b": bytes(local.randrange(300))}
        acc.append(item)
        if len(acc) > 500:
            drop = acc.pop(local.randrange(len(acc)))
            h.update(drop["s"].encode())
            h.update(len(drop["b"]).to_bytes(4, "little"))
    results[k] = (len(acc), h.hexdigest())

threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(all(r is not None for r in results), "a thread did not finish")
record("threads", results)

print("ok", digest.hexdigest())
