import os, unittest
MARK = os.environ.get("FLAKY_MARK", "/tmp/s15/flaky.mark")
class T(unittest.TestCase):
    def test_good(self): pass
    def test_sometimes(self):
        if not os.path.exists(MARK):
            open(MARK, "w").close()
            self.fail("first run fails")
