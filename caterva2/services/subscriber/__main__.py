"""``python -m caterva2.services.subscriber``: the same as ``cat2sub``."""
from caterva2.services.subscriber import main

main()
