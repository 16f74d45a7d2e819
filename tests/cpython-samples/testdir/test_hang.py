import time, unittest
class T(unittest.TestCase):
    def test_sleep(self): time.sleep(60)
