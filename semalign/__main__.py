from semalign.cli import main

main()
