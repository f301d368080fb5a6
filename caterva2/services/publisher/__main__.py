"""``python -m caterva2.services.publisher``: the same as ``cat2pub``."""
from caterva2.services.publisher import main

main()
