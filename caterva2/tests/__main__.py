"""Run the test suite of the installed package.

``python -m caterva2.tests`` runs every test; ``python -m caterva2.tests PATH ...`` runs only
what it is given (pytest's own arguments, e.g. ``-k NAME``, are passed through).  A PATH that
does not exist where you are is looked for among the package's tests, so
``python -m caterva2.tests test_client.py::test_show`` works from anywhere.
Needs pytest: ``pip install caterva2[tests]``.
"""
from __future__ import annotations

import pathlib
import sys

TESTS = pathlib.Path(__file__).parent
INSTALL_HINT = "pip install 'caterva2[tests]'"


def pytest_arguments(argv: list[str], tests: pathlib.Path = TESTS) -> list[str]:
    """The arguments for pytest: ``argv`` with its test paths found (here, else among the
    package's tests), and the package's tests when ``argv`` names none.

    >>> pytest_arguments(["-q"], pathlib.Path("/t"))
    ['-p', 'no:cacheprovider', '-q', '/t']
    """
    args, named = [], False
    for arg in argv:
        file = arg.partition("::")[0]
        if not arg.startswith("-") and file.endswith(".py") or "::" in arg:
            named = True
            if not pathlib.Path(file).exists() and (tests / file).exists():
                arg = str(tests / arg)
        elif not arg.startswith("-") and pathlib.Path(arg).is_dir():
            named = True
        args.append(arg)
    return ["-p", "no:cacheprovider", *args, *([] if named else [str(tests)])]


def main() -> None:
    try:
        import pytest
    except ImportError:
        sys.exit(f"caterva2.tests: pytest is not installed; install the test "
                 f"dependencies with: {INSTALL_HINT}")
    sys.exit(pytest.main(pytest_arguments(sys.argv[1:])))


if __name__ == "__main__":
    main()
