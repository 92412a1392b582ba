from faena.cli.main import main

main()
