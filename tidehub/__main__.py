from tidehub.cli import main

main()
