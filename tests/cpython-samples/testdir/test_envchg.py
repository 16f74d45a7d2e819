import unittest
class T(unittest.TestCase):
    def test_leave_file(self): open("left_behind.txt", "w").close()
