from caterva2.services.subscriber import main

main()
