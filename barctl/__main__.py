from barctl.cli import main

main()
