import unittest
from test import support
support.requires("nosuchresource")
