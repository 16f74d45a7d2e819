"""Python object churn: dicts, lists, strings, tuples, JSON round trips."""
import json
import sys

def churn(rounds):
    total = 0
    for r in range(rounds):
        d = {f"k{i}": (i, str(i) * 3, [i] * 5) for i in range(20000)}
        s = json.dumps(d)
        back = json.loads(s)
        total += len(back) + len(s)
        tree = [[(j, str(j)) for j in range(50)] for _ in range(2000)]
        total += sum(len(t) for t in tree)
        b = bytearray()
        for i in range(20000):
            b += b"x" * (i % 64)
        total += len(b)
    return total

print(churn(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
