"""Run the test suite of the installed package: ``python -m caterva2.tests -v``."""
import pathlib
import sys

import pytest

sys.exit(pytest.main([str(pathlib.Path(__file__).parent), "-p", "no:cacheprovider",
                      *sys.argv[1:]]))
