from inpo.cli import main

main()
