"""Python allocation workloads.
    py.py churn|json|dict|tree [scale]
churn: short-lived dicts, lists, strings, tuples and bytearrays
json:  JSON round trips of nested documents
dict:  building (and dropping) a large dict of str -> tuple
tree:  recursive trees of small objects, built, walked and dropped
Prints a checksum so the work cannot be skipped."""
import json
import sys


def churn(scale):
    total = 0
    for r in range(int(150 * scale)):
        rows = []
        for i in range(5000):
            d = {"id": i, "name": "item%d" % i, "tags": [i, i + 1, str(i)]}
            t = (i, d["name"], r)
            b = bytearray(b"x" * (i % 200))
            b += b"yz"
            rows.append((d, t, len(b)))
            if len(rows) > 500:
                rows = rows[250:]
        total += sum(x[2] for x in rows)
    return total


def json_round_trips(scale):
    doc = {
        "users": [
            {"id": i, "name": "user%d" % i, "score": i * 1.5, "roles": ["a", "b", "c"][: i % 4], "meta": {"k": str(i)}}
            for i in range(2000)
        ]
    }
    total = 0
    for _ in range(int(150 * scale)):
        text = json.dumps(doc)
        back = json.loads(text)
        total += len(text) + len(back["users"])
    return total


def large_dict(scale):
    total = 0
    for r in range(int(4 * scale)):
        d = {}
        for i in range(300000):
            d["key-%d-%d" % (r, i)] = (i, str(i))
        total += len(d) + sum(len(v[1]) for v in d.values())
        del d
    return total


class Node:
    __slots__ = ("left", "right", "value")

    def __init__(self, left, right, value):
        self.left, self.right, self.value = left, right, value


def build(depth):
    if depth == 0:
        return Node(None, None, [depth])
    return Node(build(depth - 1), build(depth - 1), (depth, "n"))


def count(node):
    n = 0
    while node is not None:
        n += 1 + count(node.right)
        node = node.left
    return n


def trees(scale):
    total = 0
    keep = build(14)  # a long-lived tree among the short-lived ones
    for _ in range(int(3 * scale)):
        total += count(build(16))
    return total + count(keep)


WORKLOADS = {"churn": churn, "json": json_round_trips, "dict": large_dict, "tree": trees}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "churn"
    scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    print(WORKLOADS[name](max(scale, 0.05)))
