"""``python -m caterva2.services.broker``: the same as ``cat2bro``."""
from caterva2.services.broker import main

main()
